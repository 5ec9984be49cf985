// Command webserver is the program in the containers example's images: an
// HTTP server on port 8080 that answers every request with
//
//	hello from <hostname> (version <version>)
//
// The version is set when the program is built:
//
//	CGO_ENABLED=0 go build -ldflags "-X main.version=2" ./examples/containers/webserver
//
// It needs nothing from its image but itself (the build is static), logs
// to stdout, and stops gracefully on SIGTERM, letting requests in flight
// finish.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// version is the server's version, set with -ldflags "-X main.version=...".
var version = "dev"

// addr is where the server listens: every address of the container, port
// 8080 (the port the image EXPOSEs).
const addr = ":8080"

func main() {
	hostname, err := os.Hostname()
	if err != nil {
		fmt.Fprintln(os.Stderr, "webserver:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := serve(ctx, addr, hostname); err != nil {
		fmt.Fprintln(os.Stderr, "webserver:", err)
		os.Exit(1)
	}
}

// handler answers every request with the greeting of this host and
// version.
func handler(hostname string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hello from %s (version %s)\n", hostname, version)
	})
}

// serve runs the server on addr until ctx ends, then shuts it down,
// giving requests in flight up to 5 seconds.
func serve(ctx context.Context, addr, hostname string) error {
	srv := &http.Server{Addr: addr, Handler: handler(hostname), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Printf("webserver version %s on %s listening on %s\n", version, hostname, addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	fmt.Println("webserver: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
