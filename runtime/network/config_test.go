package network

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func validConfig() Config {
	c := DefaultConfig()
	c.StateDir = "/var/lib/shoal/network"
	return c
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" means valid
	}{
		{"defaults with a StateDir", func(*Config) {}, ""},
		{"zero MTU means 1500", func(c *Config) { c.MTU = 0 }, ""},
		{"nil Logger", func(c *Config) { c.Logger = nil }, ""},
		{"15-character bridge", func(c *Config) { c.Bridge = "abcdefghijklmno" }, ""},
		{"bridge with dot, dash, underscore", func(c *Config) { c.Bridge = "br.0-a_b" }, ""},
		{"/8 pool", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/8") }, ""},
		{"/30 pool", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.4/30") }, ""},
		{"host namespace path", func(c *Config) { c.HostNetns = "/run/netns/n1" }, ""},
		{"smallest MTU", func(c *Config) { c.MTU = 68 }, ""},
		{"largest MTU", func(c *Config) { c.MTU = 65535 }, ""},

		{"no bridge", func(c *Config) { c.Bridge = "" }, "Config.Bridge: required"},
		{"16-character bridge", func(c *Config) { c.Bridge = "abcdefghijklmnop" }, "Config.Bridge: must be at most 15"},
		{"bridge with slash", func(c *Config) { c.Bridge = "br/0" }, "Config.Bridge: must contain only"},
		{"bridge with space", func(c *Config) { c.Bridge = "br 0" }, "Config.Bridge: must contain only"},
		{"bridge dot", func(c *Config) { c.Bridge = "." }, "Config.Bridge: must not be"},
		{"bridge dot dot", func(c *Config) { c.Bridge = ".." }, "Config.Bridge: must not be"},
		{"no subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, "Config.Subnet: required"},
		{"IPv6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "Config.Subnet: must be IPv4"},
		{"4in6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("::ffff:10.0.0.0/120") }, "Config.Subnet: must be IPv4"},
		{"/7 pool", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/7") }, "Config.Subnet: prefix length"},
		{"/31 pool", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/31") }, "Config.Subnet: prefix length"},
		{"/32 pool", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.1/32") }, "Config.Subnet: prefix length"},
		{"host bits set", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.5/24") }, "Config.Subnet: must be a network address (10.0.0.0/24)"},
		{"no StateDir", func(c *Config) { c.StateDir = "" }, "Config.StateDir: required"},
		{"relative StateDir", func(c *Config) { c.StateDir = "state" }, "Config.StateDir: must be an absolute path"},
		{"MTU too small", func(c *Config) { c.MTU = 67 }, "Config.MTU: must be from 68 to 65535"},
		{"MTU too large", func(c *Config) { c.MTU = 65536 }, "Config.MTU"},
		{"negative MTU", func(c *Config) { c.MTU = -1 }, "Config.MTU"},
		{"relative host namespace", func(c *Config) { c.HostNetns = "netns/n1" }, "Config.HostNetns: must be an absolute path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mod(&c)
			before := c
			got, err := c.withDefaults()
			assert.Equal(t, before, c, "the caller's struct is not changed")
			if tc.want == "" {
				require.NoError(t, err)
				assert.NotZero(t, got.MTU)
				assert.NotNil(t, got.Logger)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.True(t, strings.HasPrefix(err.Error(), "network: Config."), "error names the field: %v", err)
			_, err = New(c)
			assert.Error(t, err, "New refuses it too")
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	assert.Equal(t, "shoal0", c.Bridge)
	assert.Equal(t, netip.MustParsePrefix("172.31.0.0/24"), c.Subnet)
	assert.Equal(t, 1500, c.MTU)
	assert.True(t, c.Masquerade)
	assert.NotNil(t, c.Logger)
	assert.Empty(t, c.StateDir, "StateDir has no default")
	assert.Empty(t, c.HostNetns)
	_, err := c.withDefaults()
	assert.ErrorContains(t, err, "Config.StateDir: required")
	_, err = validConfig().withDefaults()
	assert.NoError(t, err)
}
