#!/usr/bin/env node
// pubsub.js drives nsqjs (and so Node's OpenSSL TLS stack) through
// nsqtls-proxy for proxy/nsqjs_test.go.
//
// Settings are one JSON object, given as the first argument or in the
// environment variable NSQJS_PUBSUB_SETTINGS:
//
//   address      "host:port" of the proxy ("[::1]:port" for IPv6)
//   ca           path of the PEM CA that must have issued the proxy's
//                certificate (it replaces Node's default roots)
//   cert, key    paths of the client certificate chain and key, PEM; leave
//                both out to connect without a client certificate
//   topic        topic to use (the channel is "nsqjs" unless given)
//   count        how many messages to publish and read back (pubsub mode)
//   compression  "", "snappy" or "deflate"
//   mode         "pubsub" (default): publish count distinct bodies with a
//                Writer, read them back with a Reader and report them;
//                "publish": one Writer, one PUB, report what happened (for
//                refusal checks)
//   timeout_ms   give up after this long (default 60000)
//   settle_ms    after the last expected body, keep reading this long to
//                catch duplicates (default 500)
//   max_in_flight  the Reader's maxInFlight (default 200)
//   tls_max_version  e.g. "TLSv1.2": caps the TLS version Node offers (nsqjs
//                has no option for it, so this sets tls.DEFAULT_MAX_VERSION)
//
// Message i of topic T is the bytes "T:i:" followed by filler bytes
// (i*131 + k*17) mod 256 for k = 0..n-1, where n is 20000+i when
// i mod 50 == 7 and (i*37) mod 300 + 1 otherwise; nsqjs_test.go builds the
// same bodies to check what came back.
//
// Output: exactly one JSON line on stdout. Exit status 0 means the mode
// succeeded; anything else (an error, a refusal, a timeout) exits 1 with
// {"ok": false, "error": {...}}. Diagnostics go to stderr.
'use strict'

const crypto = require('crypto')
const fs = require('fs')
const tls = require('tls')
const nsq = require('nsqjs')

let finished = false

function finish(code, result) {
  if (finished) return
  finished = true
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code))
}

function errorInfo(err) {
  if (!(err instanceof Error)) return {message: String(err)}
  const info = {message: err.message}
  for (const k of ['code', 'reason', 'library', 'errno', 'syscall']) {
    if (err[k] !== undefined) info[k] = err[k]
  }
  return info
}

function fail(err, extra = {}) {
  if (finished) return
  process.stderr.write(`pubsub.js: ${err && err.stack ? err.stack : err}\n`)
  finish(1, {ok: false, error: errorInfo(err), ...extra})
}

process.on('uncaughtException', (err) => fail(err))
process.on('unhandledRejection', (err) => fail(err))

function loadSettings() {
  const raw = process.argv[2] || process.env.NSQJS_PUBSUB_SETTINGS
  if (!raw) {
    throw new Error('usage: pubsub.js \'{"address": "127.0.0.1:4150", ...}\' ' +
      '(or set NSQJS_PUBSUB_SETTINGS)')
  }
  const s = JSON.parse(raw)
  s.mode = s.mode || 'pubsub'
  s.channel = s.channel || 'nsqjs'
  s.compression = s.compression || ''
  s.timeout_ms = s.timeout_ms || 60000
  s.settle_ms = s.settle_ms === undefined ? 500 : s.settle_ms
  s.max_in_flight = s.max_in_flight || 200
  for (const k of ['address', 'ca', 'topic']) {
    if (!s[k]) throw new Error(`settings: ${k} is required`)
  }
  if (!['pubsub', 'publish'].includes(s.mode)) {
    throw new Error(`settings: mode ${JSON.stringify(s.mode)} is not pubsub or publish`)
  }
  if (!['', 'snappy', 'deflate'].includes(s.compression)) {
    throw new Error(`settings: compression ${JSON.stringify(s.compression)} is not "", snappy or deflate`)
  }
  if (Boolean(s.cert) !== Boolean(s.key)) {
    throw new Error('settings: give both cert and key, or neither')
  }
  if (s.tls_max_version && !['TLSv1.2', 'TLSv1.3'].includes(s.tls_max_version)) {
    throw new Error(`settings: tls_max_version ${JSON.stringify(s.tls_max_version)} is not TLSv1.2 or TLSv1.3`)
  }
  if (s.mode === 'pubsub' && !(s.count > 0)) {
    throw new Error('settings: count must be positive in pubsub mode')
  }
  return s
}

function splitAddress(addr) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(addr) || /^([^:]+):(\d+)$/.exec(addr)
  if (!m) throw new Error(`settings: address ${JSON.stringify(addr)} is not host:port`)
  return [m[1], Number(m[2])]
}

// connectionOptions are the nsqjs options shared by Writer and Reader.
// nsqjs 0.13 hands ca, key and cert (Buffers) and rejectUnauthorized =
// tlsVerification to tls.connect({socket, ...}) without a servername, so
// Node checks the server certificate against the host the TCP socket was
// opened to.
function connectionOptions(s) {
  const opts = {
    tls: true,
    tlsVerification: true,
    ca: fs.readFileSync(s.ca),
    snappy: s.compression === 'snappy',
    deflate: s.compression === 'deflate',
    clientId: 'nsqjs-pubsub',
  }
  if (s.compression === 'deflate') opts.deflateLevel = 6
  if (s.cert) {
    opts.cert = fs.readFileSync(s.cert)
    opts.key = fs.readFileSync(s.key)
  }
  return opts
}

function body(topic, i) {
  const n = i % 50 === 7 ? 20000 + i : ((i * 37) % 300) + 1
  const filler = Buffer.alloc(n)
  for (let k = 0; k < n; k++) filler[k] = (i * 131 + k * 17) & 0xff
  return Buffer.concat([Buffer.from(`${topic}:${i}:`), filler])
}

function sha256(b) {
  return crypto.createHash('sha256').update(b).digest('hex')
}

function joinHostPort(host, port) {
  return host && host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

// describe reports what an NSQDConnection negotiated and which local
// address it used, so the test can find its lines in the audit log.
function describe(conn, localAddrs) {
  const sm = conn.statemachine
  const resp = (sm && sm.identifyResponse) || {}
  return {
    local_addr: localAddrs.get(conn) || '',
    tls_v1: Boolean(resp.tls_v1),
    snappy: Boolean(resp.snappy),
    deflate: Boolean(resp.deflate),
    deflate_level: resp.deflate_level,
    // What the client stream really runs: nsqjs swaps in these streams
    // only after nsqd's compressed OK.
    inflater: conn.inflater ? conn.inflater.constructor.name : '',
    tls_protocol: conn.conn && conn.conn.getProtocol ? conn.conn.getProtocol() : '',
    authorized: conn.conn && conn.conn.authorized,
    nsqd_version: conn.nsqdVersion,
  }
}

function trackLocalAddr(conn, localAddrs) {
  conn.on('connected', () => {
    localAddrs.set(conn, joinHostPort(conn.conn.localAddress, conn.conn.localPort))
  })
}

class TrackingReader extends nsq.Reader {
  constructor(localAddrs, ...args) {
    super(...args)
    this.localAddrs = localAddrs
    this.conns = []
  }

  registerConnectionListeners(conn) {
    super.registerConnectionListeners(conn)
    this.conns.push(conn)
    trackLocalAddr(conn, this.localAddrs)
  }
}

function newWriter(s, localAddrs) {
  const [host, port] = splitAddress(s.address)
  const writer = new nsq.Writer(host, port, connectionOptions(s))
  writer.connect()
  trackLocalAddr(writer.conn, localAddrs)
  return writer
}

function publishMode(s) {
  const localAddrs = new Map()
  const writer = newWriter(s, localAddrs)
  const extra = () => ({writer: describe(writer.conn, localAddrs)})
  writer.on('error', (err) => fail(err, extra()))
  writer.on('closed', () => fail(new Error('nsqd connection closed before READY'), extra()))
  writer.on('ready', () => {
    writer.publish(s.topic, Buffer.from('published by pubsub.js'), (err) => {
      if (err) return fail(err, extra())
      const result = {ok: true, mode: 'publish', published: 1, ...extra()}
      writer.close()
      finish(0, result)
    })
  })
}

function pubsubMode(s) {
  const localAddrs = new Map()
  const [host, port] = splitAddress(s.address)
  const received = new Map() // sha256 -> times received
  const expected = new Set()
  for (let i = 0; i < s.count; i++) expected.add(sha256(body(s.topic, i)))
  let total = 0
  let maxAttempts = 0
  let unexpected = 0
  let writer = null
  let allIn = false

  const reader = new TrackingReader(localAddrs, s.topic, s.channel, {
    ...connectionOptions(s),
    nsqdTCPAddresses: [joinHostPort(host, port)],
    maxInFlight: s.max_in_flight,
  })
  const report = () => ({
    received: total,
    distinct: received.size,
    unexpected,
    max_attempts: maxAttempts,
    writer: writer ? describe(writer.conn, localAddrs) : null,
    readers: reader.conns.map((c) => describe(c, localAddrs)),
  })
  const failWith = (err) => fail(err, report())

  reader.on('error', failWith)
  reader.on('nsqd_closed', () => {
    if (!allIn) failWith(new Error('reader: nsqd connection closed'))
  })
  reader.on('message', (msg) => {
    const digest = sha256(msg.body)
    total++
    received.set(digest, (received.get(digest) || 0) + 1)
    maxAttempts = Math.max(maxAttempts, msg.attempts)
    if (!expected.has(digest)) unexpected++
    msg.finish()
    if (!allIn && received.size >= expected.size) {
      allIn = true
      // Keep reading a little so that a duplicate would still show.
      setTimeout(done, s.settle_ms)
    }
  })

  function done() {
    const result = {ok: true, mode: 'pubsub', ...report()}
    // The digest of every body received, once per delivery, sorted.
    result.digests = []
    for (const [digest, n] of received) {
      for (let j = 0; j < n; j++) result.digests.push(digest)
    }
    result.digests.sort()
    reader.close()
    writer.close()
    finish(0, result)
  }

  // Subscribe first, so that the channel exists before anything is
  // published, then publish in batches, one MPUB at a time.
  reader.on('ready', () => {
    writer = newWriter(s, localAddrs)
    writer.on('error', (err) => {
      if (!allIn) failWith(err)
    })
    writer.on('closed', () => {
      if (!allIn) failWith(new Error('writer: nsqd connection closed'))
    })
    writer.on('ready', () => publishFrom(0))
  })

  const batch = 100
  function publishFrom(i) {
    if (i >= s.count) return
    const bodies = []
    for (let j = i; j < Math.min(i + batch, s.count); j++) bodies.push(body(s.topic, j))
    writer.publish(s.topic, bodies, (err) => {
      if (err) return failWith(err)
      publishFrom(i + batch)
    })
  }

  reader.connect()
  return report
}

function main() {
  const s = loadSettings()
  if (s.tls_max_version) tls.DEFAULT_MAX_VERSION = s.tls_max_version
  let report = () => ({})
  setTimeout(() => {
    fail(new Error(`timed out after ${s.timeout_ms} ms`), report())
  }, s.timeout_ms)
  if (s.mode === 'publish') {
    publishMode(s)
  } else {
    report = pubsubMode(s)
  }
}

try {
  main()
} catch (err) {
  fail(err)
}
