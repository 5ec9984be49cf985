// Command testprog is the program the runtime conformance suite runs as a
// task: each flag is one behaviour the suite checks. It is built statically
// (CGO_ENABLED=0) so that it runs in an image with nothing else in it.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	exit := flag.Int("exit", 0, "exit with this code")
	sleep := flag.Duration("sleep", 0, "run this long before exiting (0: exit at once)")
	trap := flag.Bool("trap", false, "exit 0 on SIGTERM, printing \"got SIGTERM\"")
	ignore := flag.Bool("ignore-term", false, "ignore SIGTERM")
	stdout := flag.String("stdout", "", "print this line on stdout")
	stderr := flag.String("stderr", "", "print this line on stderr")
	env := flag.String("env", "", "print the value of this environment variable on stdout")
	pwd := flag.Bool("pwd", false, "print the working directory on stdout")
	id := flag.Bool("id", false, "print uid:gid on stdout")
	pid := flag.Bool("pid", false, "print the process ID on stdout")
	cat := flag.String("cat", "", "print this file's content on stdout")
	write := flag.String("write", "", "write \"written\" into this file")
	listen := flag.Int("listen", 0, "answer \"hello\" to every TCP connection on this port, or on $PORT when the runtime sets it")
	flag.Parse()

	sigs := make(chan os.Signal, 1)
	switch {
	case *trap:
		signal.Notify(sigs, syscall.SIGTERM)
	case *ignore:
		signal.Ignore(syscall.SIGTERM)
	}
	if *stdout != "" {
		fmt.Println(*stdout)
	}
	if *stderr != "" {
		fmt.Fprintln(os.Stderr, *stderr)
	}
	if *env != "" {
		fmt.Println(os.Getenv(*env))
	}
	if *pwd {
		wd, _ := os.Getwd()
		fmt.Println(wd)
	}
	if *pid {
		fmt.Println(os.Getpid())
	}
	if *id {
		fmt.Printf("%d:%d\n", os.Getuid(), os.Getgid())
	}
	if *write != "" {
		if err := os.WriteFile(*write, []byte("written"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if *cat != "" {
		b, err := os.ReadFile(*cat)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Stdout.Write(b)
	}
	if *listen != 0 {
		port := fmt.Sprint(*listen)
		if p := os.Getenv("PORT"); p != "" {
			port = p
		}
		l, err := net.Listen("tcp", ":"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, "hello")
				c.Close()
			}
		}()
		fmt.Println("listening")
	}
	if *sleep > 0 {
		select {
		case <-time.After(*sleep):
		case <-sigs:
			fmt.Println("got SIGTERM")
			os.Exit(0)
		}
	}
	os.Exit(*exit)
}
