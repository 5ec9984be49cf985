package runtime

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// ParseSignal parses a signal given by name with or without the SIG prefix
// ("SIGTERM", "TERM", case-insensitive) or by number ("15"). On Linux it also
// accepts real-time signals as "SIGRTMIN+n" / "SIGRTMAX-n" or their numbers.
// Errors name the rule that was broken.
func ParseSignal(name string) (syscall.Signal, error) {
	if name == "" {
		return 0, fmt.Errorf("signal: must not be empty")
	}
	if n, err := strconv.Atoi(name); err == nil || isDigits(name) {
		if err != nil || n <= 0 || n > maxSignal || SignalName(syscall.Signal(n)) == "" {
			return 0, fmt.Errorf("signal %q: number must name a signal between 1 and %d", name, maxSignal)
		}
		return syscall.Signal(n), nil
	}
	upper := strings.ToUpper(name)
	upper = strings.TrimPrefix(upper, "SIG")
	for _, s := range signalTable {
		if s.name == upper {
			return s.sig, nil
		}
	}
	for _, s := range signalAliases {
		if s.name == upper {
			return s.sig, nil
		}
	}
	if sig, ok := parseRealtime(upper); ok {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: unknown signal; want a name such as SIGTERM or TERM, or a number", name)
}

// SignalName returns the canonical name of sig ("SIGTERM"), or "" if sig is
// not a signal ParseSignal accepts.
func SignalName(sig syscall.Signal) string {
	for _, s := range signalTable {
		if s.sig == sig {
			return "SIG" + s.name
		}
	}
	return realtimeName(sig)
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

type namedSignal struct {
	name string // without the SIG prefix, upper case
	sig  syscall.Signal
}
