//go:build !linux

package runtime

import "syscall"

const maxSignal = 15

// signalTable lists the signals every Go port defines. It is read-only.
var signalTable = [...]namedSignal{
	{"HUP", syscall.SIGHUP}, {"INT", syscall.SIGINT}, {"QUIT", syscall.SIGQUIT},
	{"ILL", syscall.SIGILL}, {"TRAP", syscall.SIGTRAP}, {"ABRT", syscall.SIGABRT},
	{"BUS", syscall.SIGBUS}, {"FPE", syscall.SIGFPE}, {"KILL", syscall.SIGKILL},
	{"SEGV", syscall.SIGSEGV}, {"PIPE", syscall.SIGPIPE}, {"ALRM", syscall.SIGALRM},
	{"TERM", syscall.SIGTERM},
}

// signalAliases are other accepted names. It is read-only.
var signalAliases = [...]namedSignal{{"IOT", syscall.SIGABRT}}

func parseRealtime(string) (syscall.Signal, bool) { return 0, false }

func realtimeName(syscall.Signal) string { return "" }
