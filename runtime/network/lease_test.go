package network

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleLease() *lease {
	return &lease{
		ID:       "task1",
		Addr:     netip.MustParseAddr("172.31.0.7"),
		HostVeth: hostVethName("shoal0", "task1"),
		Ports: []PortMapping{
			{HostPort: 8080, Target: 80, Protocol: ProtocolTCP},
			{HostPort: 53, Target: 53, Protocol: ProtocolUDP},
		},
	}
}

func TestLeaseRoundTrip(t *testing.T) {
	l := sampleLease()
	data, err := l.marshal()
	require.NoError(t, err)
	got, err := parseLease(data)
	require.NoError(t, err)
	assert.Equal(t, l.ID, got.ID)
	assert.Equal(t, l.Addr, got.Addr)
	assert.Equal(t, l.HostVeth, got.HostVeth)
	want, err := normalizePorts(l.Ports)
	require.NoError(t, err)
	assert.Equal(t, want, got.Ports, "ports come back sorted")

	l.Ports = nil
	data, err = l.marshal()
	require.NoError(t, err)
	assert.NotContains(t, string(data), "ports")
	got, err = parseLease(data)
	require.NoError(t, err)
	assert.Nil(t, got.Ports)
}

func TestParseLeaseErrors(t *testing.T) {
	const good = `{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"vsh000000000000"}`
	_, err := parseLease([]byte(good))
	require.NoError(t, err)
	for _, tc := range []struct {
		name, data, want string
	}{
		{"empty", ``, "decode"},
		{"not JSON", `lease`, "decode"},
		{"unknown field", `{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"v","extra":1}`, "unknown field"},
		{"trailing data", good + `{}`, "data after the lease"},
		{"version 0", `{"id":"t","addr":"10.0.0.2","hostVeth":"v"}`, "version: must be 1, got 0"},
		{"version 2", `{"version":2,"id":"t","addr":"10.0.0.2","hostVeth":"v"}`, "version: must be 1, got 2"},
		{"no id", `{"version":1,"addr":"10.0.0.2","hostVeth":"v"}`, "id: network: ID: required"},
		{"path in id", `{"version":1,"id":"../x","addr":"10.0.0.2","hostVeth":"v"}`, "id:"},
		{"bad addr", `{"version":1,"id":"t","addr":"10.0.0","hostVeth":"v"}`, "addr: must be an IPv4 address"},
		{"IPv6 addr", `{"version":1,"id":"t","addr":"fd00::2","hostVeth":"v"}`, "addr: must be an IPv4 address"},
		{"no veth", `{"version":1,"id":"t","addr":"10.0.0.2"}`, "hostVeth: required"},
		{"long veth", `{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"abcdefghijklmnop"}`, "hostVeth: must be at most 15"},
		{"bad port", `{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"v","ports":[{"hostPort":0,"target":1,"protocol":"tcp"}]}`, "HostPort"},
		{"port out of range", `{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"v","ports":[{"hostPort":70000,"target":1,"protocol":"tcp"}]}`, "decode"},
		{"too large", strings.Repeat(" ", maxLeaseSize+1), "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseLease([]byte(tc.data))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func FuzzParseLease(f *testing.F) {
	data, err := sampleLease().marshal()
	require.NoError(f, err)
	f.Add(data)
	f.Add([]byte(`{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"v"}`))
	f.Add([]byte(`{"version":1,"id":"t","addr":"10.0.0.2","hostVeth":"v","ports":[{"hostPort":1,"target":1,"protocol":"udp"},{"hostPort":1,"target":2,"protocol":"udp"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := parseLease(data)
		if err != nil {
			return
		}
		// Whatever parses is valid and survives a round trip unchanged.
		require.NoError(t, validID(l.ID))
		require.True(t, l.Addr.Is4())
		require.NoError(t, validIfName(l.HostVeth))
		norm, err := normalizePorts(l.Ports)
		require.NoError(t, err)
		require.Equal(t, norm, l.Ports)
		out, err := l.marshal()
		require.NoError(t, err)
		again, err := parseLease(out)
		require.NoError(t, err)
		require.Equal(t, l, again)
	})
}

func TestLeaseStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "leases")
	s := leaseStore{dir: dir}
	got, err := s.load()
	require.NoError(t, err, "a missing directory holds no leases")
	assert.Empty(t, got)

	l := sampleLease()
	require.NoError(t, s.write(l))
	l2 := &lease{ID: "task2", Addr: netip.MustParseAddr("172.31.0.8"), HostVeth: "vsh111111111111"}
	require.NoError(t, s.write(l2))
	l.Ports = l.Ports[:1]
	require.NoError(t, s.write(l), "replacing")

	// A crash's leftover temporary file is removed; unrelated files are
	// ignored.
	tmp := filepath.Join(dir, ".task3.tmp-123")
	require.NoError(t, os.WriteFile(tmp, []byte("{"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600))

	got, err = s.load()
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, l, got[0])
	assert.Equal(t, l2, got[1])
	assert.NoFileExists(t, tmp)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 3, "two leases and the README, no temporary files")

	require.NoError(t, s.remove("task2"))
	require.NoError(t, s.remove("task2"), "removing twice")
	got, err = s.load()
	require.NoError(t, err)
	assert.Len(t, got, 1)

	// A lease under another file name is refused, naming the file.
	data, err := l2.marshal()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "other.json"), data, 0o600))
	_, err = s.load()
	assert.ErrorContains(t, err, "other.json")
	assert.ErrorContains(t, err, "does not match the file name")
	require.NoError(t, os.Remove(filepath.Join(dir, "other.json")))

	// A corrupt lease is an error, not skipped.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"version":1`), 0o600))
	_, err = s.load()
	assert.ErrorContains(t, err, "bad.json")
}
