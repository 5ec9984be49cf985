package runtime_test

import (
	"errors"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in      string
		want    syscall.Signal
		wantErr string
	}{
		{in: "SIGTERM", want: syscall.SIGTERM},
		{in: "TERM", want: syscall.SIGTERM},
		{in: "15", want: syscall.SIGTERM},
		{in: "sigterm", want: syscall.SIGTERM},
		{in: "SIGINT", want: syscall.SIGINT},
		{in: "int", want: syscall.SIGINT},
		{in: "SIGQUIT", want: syscall.SIGQUIT},
		{in: "3", want: syscall.SIGQUIT},
		{in: "SIGKILL", want: syscall.SIGKILL},
		{in: "SIGHUP", want: syscall.SIGHUP},
		{in: "USR1", want: syscall.SIGUSR1},
		{in: "SIGUSR2", want: syscall.SIGUSR2},
		{in: "SIGIOT", want: syscall.SIGABRT},
		{in: "SIGRTMIN", want: 34},
		{in: "SIGRTMIN+2", want: 36},
		{in: "RTMAX", want: 64},
		{in: "SIGRTMAX-1", want: 63},
		{in: "64", want: 64},
		{in: "", wantErr: "must not be empty"},
		{in: "0", wantErr: "number must name a signal"},
		{in: "-1", wantErr: "number must name a signal"},
		{in: "65", wantErr: "number must name a signal"},
		{in: "32", wantErr: "number must name a signal"},
		{in: "99999999999999999999", wantErr: "number must name a signal"},
		{in: "SIGFOO", wantErr: "unknown signal"},
		{in: "SIG", wantErr: "unknown signal"},
		{in: " SIGTERM", wantErr: "unknown signal"},
		{in: "SIGRTMIN+31", wantErr: "unknown signal"},
		{in: "SIGRTMIN-1", wantErr: "unknown signal"},
		{in: "SIGRTMAX+1", wantErr: "unknown signal"},
		{in: "SIGRTMIN+", wantErr: "unknown signal"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := runtime.ParseSignal(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestSignalNameRoundTrip(t *testing.T) {
	for n := 1; n <= 64; n++ {
		sig := syscall.Signal(n)
		name := runtime.SignalName(sig)
		if name == "" {
			_, err := runtime.ParseSignal(strconv.Itoa(n))
			assert.Error(t, err, "number %d has no name but parses", n)
			continue
		}
		got, err := runtime.ParseSignal(name)
		require.NoError(t, err, name)
		assert.Equal(t, sig, got, name)
	}
	assert.Equal(t, "SIGKILL", runtime.SignalName(syscall.SIGKILL))
	assert.Equal(t, "", runtime.SignalName(0))
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"SIGTERM", "term", "15", "SIGRTMIN+3", "RTMAX-2", "", "0", "+9", "SIGRTMIN+"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := runtime.ParseSignal(s)
		if err != nil {
			return
		}
		name := runtime.SignalName(sig)
		require.NotEmpty(t, name, "ParseSignal(%q) = %d has no name", s, sig)
		again, err := runtime.ParseSignal(name)
		require.NoError(t, err)
		require.Equal(t, sig, again)
		again, err = runtime.ParseSignal(strconv.Itoa(int(sig)))
		require.NoError(t, err)
		require.Equal(t, sig, again)
	})
}

func TestSpecValidate(t *testing.T) {
	ok := runtime.Spec{Command: []string{"true"}}
	require.NoError(t, ok.Validate())
	tests := []struct {
		name  string
		mut   func(*runtime.Spec)
		field string
	}{
		{"no command", func(s *runtime.Spec) { s.Command = nil }, "Spec.Command: must not be empty"},
		{"empty program", func(s *runtime.Spec) { s.Command = []string{""} }, "Spec.Command[0]"},
		{"nul arg", func(s *runtime.Spec) { s.Command = []string{"x", "a\x00b"} }, "Spec.Command[1]: must not contain NUL"},
		{"env no =", func(s *runtime.Spec) { s.Env = []string{"A=1", "B"} }, "Spec.Env[1]: must have the form KEY=value"},
		{"env empty key", func(s *runtime.Spec) { s.Env = []string{"=x"} }, "Spec.Env[0]: key must not be empty"},
		{"relative dir", func(s *runtime.Spec) { s.Dir = "rel/dir" }, "Spec.Dir: must be an absolute path"},
		{"bad signal", func(s *runtime.Spec) { s.StopSignal = "SIGNOPE" }, "Spec.StopSignal: signal \"SIGNOPE\""},
		{"negative grace", func(s *runtime.Spec) { s.StopGracePeriod = -time.Second }, "Spec.StopGracePeriod: must not be negative"},
		{"negative cpu", func(s *runtime.Spec) { s.Resources.NanoCPUs = -1 }, "Spec.Resources.NanoCPUs"},
		{"negative mem", func(s *runtime.Spec) { s.Resources.MemoryBytes = -1 }, "Spec.Resources.MemoryBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := runtime.Spec{Command: []string{"true"}}
			tt.mut(&s)
			err := s.Validate()
			require.Error(t, err)
			assert.True(t, errors.Is(err, runtime.ErrInvalidTask))
			assert.Contains(t, err.Error(), tt.field)
			err = runtime.Task{ID: "t1", Spec: s}.Validate()
			assert.ErrorIs(t, err, runtime.ErrInvalidTask)
		})
	}
	err := runtime.Task{Spec: ok}.Validate()
	require.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.Contains(t, err.Error(), "Task.ID: must not be empty")
}

func TestSpecEffectiveDefaults(t *testing.T) {
	var s runtime.Spec
	assert.Equal(t, "SIGTERM", s.EffectiveStopSignal())
	assert.Equal(t, 10*time.Second, s.EffectiveStopGracePeriod())
	s.StopSignal, s.StopGracePeriod = "int", time.Second
	assert.Equal(t, "SIGINT", s.EffectiveStopSignal())
	assert.Equal(t, time.Second, s.EffectiveStopGracePeriod())
}

func TestExitStatus(t *testing.T) {
	assert.True(t, runtime.ExitStatus{}.Success())
	assert.False(t, runtime.ExitStatus{Code: 3}.Success())
	assert.False(t, runtime.ExitStatus{Code: -1, Signal: "SIGKILL"}.Success())
	assert.Equal(t, "exit code 3", runtime.ExitStatus{Code: 3}.String())
	assert.Equal(t, "killed by SIGKILL", runtime.ExitStatus{Code: -1, Signal: "SIGKILL"}.String())
	assert.Equal(t, "custom", runtime.ExitStatus{Message: "custom"}.String())
}

func TestLogOptionsValidate(t *testing.T) {
	for _, s := range []string{"", "stdout", "stderr"} {
		assert.NoError(t, runtime.LogOptions{Stream: s}.Validate())
	}
	err := runtime.LogOptions{Stream: "both"}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "LogOptions.Stream")
}
