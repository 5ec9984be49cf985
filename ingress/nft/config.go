package nft

import (
	"fmt"
	"log/slog"
)

// maxTableNameLen is the kernel's NFT_TABLE_MAXNAMELEN (256) less the
// terminating NUL byte.
const maxTableNameLen = 255

// Config configures a Balancer.
type Config struct {
	// TableName is the nftables table (family inet) the balancer owns: every
	// Apply replaces its chains' contents and Stop deletes it. Default
	// "shoal-ingress": one well-known name makes the rules easy to find with
	// `nft list table inet shoal-ingress`. Give each balancer that shares a
	// network namespace its own name; two balancers on one table overwrite
	// each other.
	TableName string
	// NetNS is the path of a network namespace to program, such as
	// /var/run/netns/NAME or /proc/PID/ns/net. Default "" (the namespace of
	// the calling process), which is what a node programming its own host
	// wants; a path lets a host or a test program another namespace
	// without moving its own threads.
	NetNS string
	// Logger receives the balancer's logs. Default: discard, because a
	// library must not write to the host's logs unless asked.
	Logger *slog.Logger
}

// DefaultConfig returns the configuration with every default set.
func DefaultConfig() Config {
	return Config{
		TableName: "shoal-ingress",
		Logger:    slog.New(slog.DiscardHandler),
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the
// result. It works on a copy; the caller's struct is never changed.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.TableName == "" {
		c.TableName = d.TableName
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if len(c.TableName) > maxTableNameLen {
		return c, fmt.Errorf("nft: Config.TableName: must be at most %d bytes, got %d", maxTableNameLen, len(c.TableName))
	}
	for i := 0; i < len(c.TableName); i++ {
		if ch := c.TableName[i]; ch == 0 || ch < 0x20 || ch == 0x7f {
			return c, fmt.Errorf("nft: Config.TableName: must not contain control characters, got %q", c.TableName)
		}
	}
	if c.NetNS != "" && c.NetNS[0] != '/' {
		return c, fmt.Errorf("nft: Config.NetNS: must be an absolute path, got %q", c.NetNS)
	}
	return c, nil
}
