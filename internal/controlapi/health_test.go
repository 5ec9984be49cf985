package controlapi

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

func TestValidateHealthCheck(t *testing.T) {
	web := []*api.PortConfig{port(80, 0, tcp, ingress), port(53, 0, udp, ingress)}
	cmd := []string{"/bin/check"}
	tests := []struct {
		name  string
		ports []*api.PortConfig
		hc    *api.HealthCheck
		want  string // "" = valid
	}{
		{"none", nil, nil, ""},
		{"command", nil, &api.HealthCheck{Command: cmd}, ""},
		{"http", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, Path: "/healthz"}}, ""},
		{"http status range", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, StatusMin: 200, StatusMax: 204}}, ""},
		{"tcp", web, &api.HealthCheck{Tcp: &api.TCPCheck{Port: 80}}, ""},
		{"disable", nil, &api.HealthCheck{Disable: true}, ""},
		{"all durations", nil, &api.HealthCheck{Command: cmd, Interval: int64(time.Second), Timeout: int64(time.Second),
			Retries: 5, StartPeriod: int64(time.Minute), StartInterval: int64(time.Second)}, ""},
		{"no test", nil, &api.HealthCheck{Interval: int64(time.Second)},
			"ServiceSpec.Task.HealthCheck: needs a test (Command, HTTP or TCP)"},
		{"two kinds", web, &api.HealthCheck{Command: cmd, Tcp: &api.TCPCheck{Port: 80}},
			"ServiceSpec.Task.HealthCheck: must have exactly one test, got Command and TCP"},
		{"three kinds", web, &api.HealthCheck{Command: cmd, Http: &api.HTTPCheck{Port: 80}, Tcp: &api.TCPCheck{Port: 80}},
			"ServiceSpec.Task.HealthCheck: must have exactly one test, got Command and HTTP and TCP"},
		{"disable with a test", nil, &api.HealthCheck{Disable: true, Command: cmd},
			"ServiceSpec.Task.HealthCheck.Disable: cannot be set with a test (Command)"},
		{"empty program", nil, &api.HealthCheck{Command: []string{""}},
			"ServiceSpec.Task.HealthCheck.Command[0]: program must not be empty"},
		{"NUL in argument", nil, &api.HealthCheck{Command: []string{"a", "b\x00"}},
			"ServiceSpec.Task.HealthCheck.Command[1]: must not contain NUL bytes"},
		{"http port not exposed", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 8080}},
			"ServiceSpec.Task.HealthCheck.HTTP.Port: 8080/tcp is not a target port of the service"},
		{"http port without ports", nil, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80}},
			"ServiceSpec.Task.HealthCheck.HTTP.Port: 80/tcp is not a target port of the service"},
		{"http port 0", web, &api.HealthCheck{Http: &api.HTTPCheck{}},
			"ServiceSpec.Task.HealthCheck.HTTP.Port: must be 1-65535, got 0"},
		{"tcp port of udp only", web, &api.HealthCheck{Tcp: &api.TCPCheck{Port: 53}},
			"ServiceSpec.Task.HealthCheck.TCP.Port: 53/tcp is not a target port of the service"},
		{"http relative path", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, Path: "healthz"}},
			"ServiceSpec.Task.HealthCheck.HTTP.Path: must start with '/'"},
		{"http path with space", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, Path: "/a b"}},
			"ServiceSpec.Task.HealthCheck.HTTP.Path: must not contain spaces"},
		{"status min too low", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, StatusMin: 99, StatusMax: 200}},
			"ServiceSpec.Task.HealthCheck.HTTP.Status.Min: must be 100-599, got 99"},
		{"status max below min", web, &api.HealthCheck{Http: &api.HTTPCheck{Port: 80, StatusMin: 300, StatusMax: 200}},
			"ServiceSpec.Task.HealthCheck.HTTP.Status.Max: must be 300-599 (at least Min), got 200"},
		{"negative interval", nil, &api.HealthCheck{Command: cmd, Interval: -1},
			"ServiceSpec.Task.HealthCheck.Interval: must be >= 0"},
		{"negative timeout", nil, &api.HealthCheck{Command: cmd, Timeout: -1},
			"ServiceSpec.Task.HealthCheck.Timeout: must be >= 0"},
		{"negative retries", nil, &api.HealthCheck{Command: cmd, Retries: -1},
			"ServiceSpec.Task.HealthCheck.Retries: must be >= 0"},
		{"negative start period", nil, &api.HealthCheck{Command: cmd, StartPeriod: -1},
			"ServiceSpec.Task.HealthCheck.StartPeriod: must be >= 0"},
		{"negative start interval", nil, &api.HealthCheck{Command: cmd, StartInterval: -1},
			"ServiceSpec.Task.HealthCheck.StartInterval: must be >= 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := withPorts("web", tc.ports...)
			s.Task.HealthCheck = tc.hc
			err := ValidateServiceSpec(s)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestHealthCheckRefusedWritesNothing: a refused check leaves the store as
// it was, on create and on update.
func TestHealthCheckRefusedWritesNothing(t *testing.T) {
	ctx := context.Background()
	s := New(newCheckedStore(t))
	bad := withPorts("web", port(80, 0, tcp, ingress))
	bad.Task.HealthCheck = &api.HealthCheck{Http: &api.HTTPCheck{Port: 81}}
	_, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: bad})
	require.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
	list, err := s.ListServices(ctx, &api.ListServicesRequest{})
	require.NoError(t, err)
	assert.Empty(t, list.Services)

	good := withPorts("web", port(80, 0, tcp, ingress))
	good.Task.HealthCheck = &api.HealthCheck{Http: &api.HTTPCheck{Port: 80}}
	c, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: good})
	require.NoError(t, err)
	_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: c.Service.Id, Version: c.Service.Meta.Version, Spec: bad})
	require.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
	got, err := s.GetService(ctx, &api.GetRequest{Id: c.Service.Id})
	require.NoError(t, err)
	assert.Equal(t, c.Service.Meta.Version, got.Service.Meta.Version, "nothing written")
	assert.Equal(t, uint32(80), got.Service.Spec.Task.HealthCheck.GetHttp().GetPort())
}
