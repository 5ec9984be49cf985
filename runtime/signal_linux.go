package runtime

import (
	"strconv"
	"strings"
	"syscall"
)

// Linux real-time signals as seen by programs linked with glibc or musl:
// the C library reserves 32 and 33 for itself.
const (
	sigRTMin  = 34
	sigRTMax  = 64
	maxSignal = sigRTMax
)

// signalTable lists the canonical Linux signal names. It is read-only.
var signalTable = [...]namedSignal{
	{"HUP", syscall.SIGHUP}, {"INT", syscall.SIGINT}, {"QUIT", syscall.SIGQUIT},
	{"ILL", syscall.SIGILL}, {"TRAP", syscall.SIGTRAP}, {"ABRT", syscall.SIGABRT},
	{"BUS", syscall.SIGBUS}, {"FPE", syscall.SIGFPE}, {"KILL", syscall.SIGKILL},
	{"USR1", syscall.SIGUSR1}, {"SEGV", syscall.SIGSEGV}, {"USR2", syscall.SIGUSR2},
	{"PIPE", syscall.SIGPIPE}, {"ALRM", syscall.SIGALRM}, {"TERM", syscall.SIGTERM},
	{"STKFLT", syscall.SIGSTKFLT}, {"CHLD", syscall.SIGCHLD}, {"CONT", syscall.SIGCONT},
	{"STOP", syscall.SIGSTOP}, {"TSTP", syscall.SIGTSTP}, {"TTIN", syscall.SIGTTIN},
	{"TTOU", syscall.SIGTTOU}, {"URG", syscall.SIGURG}, {"XCPU", syscall.SIGXCPU},
	{"XFSZ", syscall.SIGXFSZ}, {"VTALRM", syscall.SIGVTALRM}, {"PROF", syscall.SIGPROF},
	{"WINCH", syscall.SIGWINCH}, {"IO", syscall.SIGIO}, {"PWR", syscall.SIGPWR},
	{"SYS", syscall.SIGSYS},
}

// signalAliases are other accepted names. It is read-only.
var signalAliases = [...]namedSignal{
	{"IOT", syscall.SIGABRT}, {"POLL", syscall.SIGIO}, {"CLD", syscall.SIGCHLD},
}

// parseRealtime parses "RTMIN", "RTMIN+n", "RTMAX", "RTMAX-n" (upper case,
// without the SIG prefix).
func parseRealtime(s string) (syscall.Signal, bool) {
	base, sign := 0, 1
	switch {
	case strings.HasPrefix(s, "RTMIN"):
		base, s = sigRTMin, s[len("RTMIN"):]
	case strings.HasPrefix(s, "RTMAX"):
		base, sign, s = sigRTMax, -1, s[len("RTMAX"):]
	default:
		return 0, false
	}
	if s == "" {
		return syscall.Signal(base), true
	}
	want := "+"
	if sign < 0 {
		want = "-"
	}
	if !strings.HasPrefix(s, want) || !isDigits(s[1:]) {
		return 0, false
	}
	n, err := strconv.Atoi(s[1:])
	if err != nil || n > sigRTMax-sigRTMin {
		return 0, false
	}
	return syscall.Signal(base + sign*n), true
}

func realtimeName(sig syscall.Signal) string {
	switch {
	case sig == sigRTMin:
		return "SIGRTMIN"
	case sig > sigRTMin && sig <= sigRTMax:
		return "SIGRTMIN+" + strconv.Itoa(int(sig)-sigRTMin)
	}
	return ""
}
