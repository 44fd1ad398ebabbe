// Command nsqtls-proxy puts mutual TLS in front of nsqd's TCP protocol.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nsqtls/nsqtls-proxy/proxy"
	"go.uber.org/zap"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts := proxy.NewOptions()
	fs := opts.FlagSet("nsqtls-proxy")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := opts.ParseArgs(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "nsqtls-proxy:", err)
		return 2
	}
	if *showVersion {
		fmt.Println("nsqtls-proxy", proxy.Version)
		return 0
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "nsqtls-proxy:", err)
		return 2
	}

	log, err := proxy.NewLogger(opts.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nsqtls-proxy:", err)
		return 2
	}
	defer log.Sync()

	srv, err := proxy.New(opts, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: reloading revocation sources")
			srv.Reload()
		}
	}()
	if err := srv.Run(ctx); err != nil {
		log.Error("stopped", zap.Error(err))
		return 1
	}
	log.Info("stopped")
	return 0
}
