package revocation

import (
	"bytes"
	"hash/maphash"
	"math/big"
)

// revokedSet holds the serials of one CRL in an open-addressing hash
// table over a byte arena: about 40 bytes per entry and no pointer per
// entry, so a CRL of a million entries stays small and cheap for the
// garbage collector.
type revokedSet struct {
	seed    maphash.Seed
	slots   []uint32 // 0: empty; otherwise an index into entries, plus one
	serials []byte
	entries []revokedEntry
}

type revokedEntry struct {
	off    uint32
	n      uint16
	reason int16 // -1: the CRL gave none
	at     int64 // revocation time, Unix seconds
}

func newRevokedSet(capacity int) revokedSet {
	size := 8
	for size < 2*capacity {
		size <<= 1
	}
	return revokedSet{
		seed:    maphash.MakeSeed(),
		slots:   make([]uint32, size),
		entries: make([]revokedEntry, 0, capacity),
	}
}

func (s *revokedSet) serial(e revokedEntry) []byte {
	return s.serials[e.off : e.off+uint32(e.n)]
}

// find returns the slot that holds key or the empty slot where it belongs.
func (s *revokedSet) find(key []byte) int {
	mask := uint64(len(s.slots) - 1)
	i := maphash.Bytes(s.seed, key) & mask
	for {
		idx := s.slots[i]
		if idx == 0 || bytes.Equal(s.serial(s.entries[idx-1]), key) {
			return int(i)
		}
		i = (i + 1) & mask
	}
}

// add records key; a serial listed twice keeps its first entry. The set
// never holds more entries than the capacity it was made with.
func (s *revokedSet) add(key []byte, reason int16, at int64) {
	if len(s.entries) == cap(s.entries) {
		return
	}
	slot := s.find(key)
	if s.slots[slot] != 0 {
		return
	}
	s.entries = append(s.entries, revokedEntry{
		off: uint32(len(s.serials)), n: uint16(len(key)), reason: reason, at: at,
	})
	s.serials = append(s.serials, key...)
	s.slots[slot] = uint32(len(s.entries))
}

func (s *revokedSet) lookup(key []byte) (revokedEntry, bool) {
	if len(s.slots) == 0 {
		return revokedEntry{}, false
	}
	idx := s.slots[s.find(key)]
	if idx == 0 {
		return revokedEntry{}, false
	}
	return s.entries[idx-1], true
}

func (s *revokedSet) len() int { return len(s.entries) }

// serialKey is the lookup key of a certificate's serial number: the
// magnitude's big-endian bytes, with a 0xff marker for the (invalid but
// seen) negative serials.
func serialKey(serial *big.Int) []byte {
	return serialKeyInto(nil, serial)
}

// serialKeyInto appends serialKey(serial) to dst, without allocating when
// dst has room.
func serialKeyInto(dst []byte, serial *big.Int) []byte {
	if serial.Sign() < 0 {
		dst = append(dst, 0xff)
		return append(dst, new(big.Int).Neg(serial).Bytes()...)
	}
	n := (serial.BitLen() + 7) / 8
	if cap(dst)-len(dst) < n {
		return append(dst, serial.Bytes()...)
	}
	out := dst[len(dst) : len(dst)+n]
	serial.FillBytes(out)
	return dst[:len(dst)+n]
}

// derSerialKey is serialKey for the content octets of a DER INTEGER.
func derSerialKey(content []byte) []byte {
	if len(content) > 0 && content[0]&0x80 != 0 {
		return serialKey(new(big.Int).Sub(new(big.Int).SetBytes(content),
			new(big.Int).Lsh(big.NewInt(1), uint(8*len(content)))))
	}
	return bytes.TrimLeft(content, "\x00")
}
