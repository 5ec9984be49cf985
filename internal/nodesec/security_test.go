package nodesec

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

func TestNewValidates(t *testing.T) {
	ok := Config{StateDir: "/x", RenewTargets: func() []string { return nil }, WantRole: func() string { return pki.OUWorker }}
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"StateDir", func(c *Config) { c.StateDir = "" }, "Config.StateDir"},
		{"RenewTargets", func(c *Config) { c.RenewTargets = nil }, "Config.RenewTargets"},
		{"WantRole", func(c *Config) { c.WantRole = nil }, "Config.WantRole"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			_, err := New(cfg)
			assert.ErrorContains(t, err, tc.field)
		})
	}
	s, err := New(ok)
	require.NoError(t, err)
	assert.Nil(t, s.Credentials(), "no credentials before Init, Load or Join")
	assert.NoError(t, s.Stop(context.Background()), "Stop before Start")
}

func TestInitAndLoad(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, pki.OUManager)
	root, err := h.sec.Init(ctx, "node1", clusterID, nil, 0)
	require.NoError(t, err)
	require.NotNil(t, root)
	assert.NotEmpty(t, root.KeyPEM, "the cluster's own root CA can sign")

	c := h.sec.Credentials()
	require.NotNil(t, c)
	assert.Equal(t, pki.Subject{NodeID: "node1", Role: pki.OUManager, ClusterID: clusterID}, c.Subject())
	assert.Equal(t, root.CertPEM, c.KeyPair().RootPEM)
	_, _, err = pki.VerifyCert(c.KeyPair().CertPEM, root.Pool(), time.Now())
	require.NoError(t, err, "the certificate chains to the root")
	assert.Contains(t, c.Leaf().DNSNames, pki.ManagerServerName)
	validity := c.Leaf().NotAfter.Sub(time.Now())
	assert.InDelta(t, pki.DefaultCertValidity.Hours(), validity.Hours(), 1, "validity 0 means the default")

	dir := Dir(h.dir)
	assert.Equal(t, filepath.Join(h.dir, "certificates"), dir)
	info, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), info.Mode().Perm())
	for _, f := range []string{pki.CertFile, pki.KeyFile, pki.RootFile} {
		info, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, f)
		assert.Equal(t, fs.FileMode(0o600), info.Mode().Perm(), f)
	}
	assert.False(t, CertificateExpired(h.dir))

	// A restart reads the same identity back.
	again := newHarness(t, pki.OUManager)
	again.sec.cfg.StateDir = h.dir
	require.NoError(t, again.sec.Load("node1"))
	assert.Equal(t, c.KeyPair(), again.sec.Credentials().KeyPair())

	// An explicit validity.
	h2 := newHarness(t, pki.OUManager)
	_, err = h2.sec.Init(ctx, "node2", clusterID, nil, time.Hour)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(time.Hour), h2.sec.Credentials().Leaf().NotAfter, time.Minute)

	// Bad input names what is wrong.
	h3 := newHarness(t, pki.OUManager)
	_, err = h3.sec.Init(ctx, "node3", "not a cluster id", nil, 0)
	assert.ErrorContains(t, err, "clusterID")
	_, err = h3.sec.Init(ctx, "node3", clusterID, nil, time.Minute)
	assert.ErrorContains(t, err, "Validity")
	_, err = h3.sec.Init(ctx, "node3", clusterID, &ExternalCA{URL: "https://ca.example", RootCert: []byte("junk")}, 0)
	assert.ErrorContains(t, err, "Config.ExternalCA.RootCert")
	assert.Nil(t, h3.sec.Credentials(), "nothing adopted after a failure")
	_, err = os.Stat(Dir(h3.dir))
	assert.ErrorIs(t, err, fs.ErrNotExist, "nothing written after a failure")
}

func TestLoadRefusals(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)

	t.Run("no certificate", func(t *testing.T) {
		h := newHarness(t, pki.OUWorker)
		err := h.sec.Load("node1")
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrCertificateExpired)
		assert.ErrorContains(t, err, "join the cluster again with a token")
		assert.False(t, CertificateExpired(h.dir))
	})

	t.Run("expired", func(t *testing.T) {
		h := newHarness(t, pki.OUWorker)
		require.NoError(t, pki.SaveKeyPair(Dir(h.dir), expiredKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker, ClusterID: clusterID})))
		err := h.sec.Load("node1")
		require.ErrorIs(t, err, ErrCertificateExpired)
		assert.ErrorIs(t, err, pki.ErrCertExpired)
		assert.ErrorContains(t, err, "call Join with a join token")
		assert.Nil(t, h.sec.Credentials(), "an expired certificate is not adopted")
		assert.True(t, CertificateExpired(h.dir))

		require.NoError(t, RemoveStale(h.dir, "identity.json"))
		assert.False(t, CertificateExpired(h.dir))
		_, err = os.Stat(Dir(h.dir))
		assert.ErrorIs(t, err, fs.ErrNotExist)
	})

	t.Run("key does not match", func(t *testing.T) {
		h := newHarness(t, pki.OUWorker)
		kp := issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)
		kp.KeyPEM = issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour).KeyPEM
		require.NoError(t, pki.SaveKeyPair(Dir(h.dir), kp))
		err := h.sec.Load("node1")
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrCertificateExpired)
		assert.False(t, CertificateExpired(h.dir))
	})
}

// TestRenewalOnSchedule shows the loop does not renew before the renewal
// point (50%-80% of the validity), and renews once the clock passes it.
func TestRenewalOnSchedule(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	srv := startCA(t, root, nil, map[string]api.NodeRole{"node1": api.NodeRole_NODE_ROLE_WORKER})
	h := newHarness(t, pki.OUWorker, srv.addr)
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	old := h.sec.Credentials().Leaf()
	validity := old.NotAfter.Sub(old.NotBefore)

	h.start(t)
	h.waitTimer(t)
	h.advanceTo(old.NotBefore.Add(validity / 2).Add(-time.Minute))
	assert.Equal(t, 1, h.clock.Timers(), "the timer did not fire before half the validity")
	assert.Zero(t, h.attempts.Load(), "no renewal before half the validity")
	assert.Equal(t, old.SerialNumber, h.serial())

	h.advanceTo(old.NotBefore.Add(validity * 8 / 10).Add(time.Minute))
	require.Eventually(t, func() bool { return h.serial().Cmp(old.SerialNumber) != 0 }, 10*time.Second, 5*time.Millisecond,
		"renewed past 80%% of the validity")
	h.waitTimer(t)
	got := h.sec.Credentials()
	assert.True(t, got.Leaf().NotAfter.After(old.NotAfter), "the new certificate lasts longer")
	assert.Equal(t, pki.Subject{NodeID: "node1", Role: pki.OUWorker, ClusterID: clusterID}, got.Subject())
	assert.Equal(t, int32(1), h.attempts.Load(), "one renewal")
	assert.False(t, bytes.Equal(old.Raw, got.Leaf().Raw))

	saved, err := pki.LoadKeyPair(Dir(h.dir))
	require.NoError(t, err)
	assert.Equal(t, got.KeyPair(), saved, "the renewed key pair is saved")
	var n *api.Node
	srv.store.View(func(tx state.ReadTx) { n = tx.GetNode("node1") })
	assert.Equal(t, root.Digest(), n.GetCertRootDigest(), "the CA records which root issued it")
}

// TestRenewalOnRoleChange shows a role the certificate does not carry is
// renewed at once, without the clock moving.
func TestRenewalOnRoleChange(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	srv := startCA(t, root, nil, map[string]api.NodeRole{"node1": api.NodeRole_NODE_ROLE_WORKER})
	h := newHarness(t, pki.OUWorker, srv.addr)
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	h.start(t)
	h.waitTimer(t)
	assert.Zero(t, h.attempts.Load())

	srv.setRole(t, "node1", api.NodeRole_NODE_ROLE_MANAGER)
	h.want.Store(pki.OUManager)
	h.sec.Kick()
	require.Eventually(t, func() bool { return h.sec.Credentials().Subject().Role == pki.OUManager }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	assert.Equal(t, int32(1), h.attempts.Load())
	assert.Contains(t, h.sec.Credentials().Leaf().DNSNames, pki.ManagerServerName)

	// And back, on demotion.
	srv.setRole(t, "node1", api.NodeRole_NODE_ROLE_WORKER)
	h.want.Store(pki.OUWorker)
	h.sec.Kick()
	require.Eventually(t, func() bool { return h.sec.Credentials().Subject().Role == pki.OUWorker }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	assert.Equal(t, int32(2), h.attempts.Load())
}

// TestRenewalRoleNotIssuedBacksOff shows that when the CA keeps issuing
// another role than the node wants (its store lags the role change), the
// loop asks again after a delay that doubles from a second (plus up to half
// as much), instead of renewing back to back.
func TestRenewalRoleNotIssuedBacksOff(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	srv := startCA(t, root, nil, map[string]api.NodeRole{"node1": api.NodeRole_NODE_ROLE_WORKER})
	h := newHarness(t, pki.OUManager, srv.addr)
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	h.start(t)
	require.Eventually(t, func() bool { return h.attempts.Load() >= 1 }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	time.Sleep(50 * time.Millisecond) // a hot loop would renew again meanwhile
	assert.Equal(t, int32(1), h.attempts.Load(), "one renewal, then a delay")
	assert.Equal(t, pki.OUWorker, h.sec.Credentials().Subject().Role, "the CA issued what its store says")

	// The first delay is 1s to 1.5s.
	h.clock.Advance(900 * time.Millisecond)
	assert.Equal(t, 1, h.clock.Timers(), "not before a second")
	h.clock.Advance(700 * time.Millisecond)
	require.Eventually(t, func() bool { return h.attempts.Load() == 2 }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)

	// The second is 2s to 4.5s.
	h.clock.Advance(1900 * time.Millisecond)
	assert.Equal(t, 1, h.clock.Timers(), "the delay doubled")
	assert.Equal(t, int32(2), h.attempts.Load())

	srv.setRole(t, "node1", api.NodeRole_NODE_ROLE_MANAGER)
	h.clock.Advance(2700 * time.Millisecond)
	require.Eventually(t, func() bool { return h.sec.Credentials().Subject().Role == pki.OUManager }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	assert.Equal(t, int32(3), h.attempts.Load(), "the role wanted: no more renewals")
}

// TestRenewalRetriesAfterBackoff shows a failed renewal is retried once the
// backoff (a twentieth of the validity left, between 1s and 1m, plus up to
// half of that) has passed on the clock, not before, and that the retry
// succeeds once a CA answers.
func TestRenewalRetriesAfterBackoff(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	h := newHarness(t, pki.OUManager, deadAddr(t))
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	old := h.serial()
	h.start(t) // the role differs: a renewal at once, which fails

	require.Eventually(t, func() bool { return h.attempts.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	// About 60m are left: the backoff is 1m plus up to 30s.
	h.clock.Advance(59 * time.Second)
	assert.Equal(t, 1, h.clock.Timers(), "the retry timer has not fired")
	assert.Equal(t, int32(1), h.attempts.Load(), "no retry before the backoff")

	h.clock.Advance(32 * time.Second)
	require.Eventually(t, func() bool { return h.attempts.Load() == 2 }, 10*time.Second, 5*time.Millisecond, "retried after the backoff")
	h.waitTimer(t)
	h.clock.Advance(59 * time.Second)
	assert.Equal(t, int32(2), h.attempts.Load(), "the next retry waits a backoff again")
	assert.Equal(t, old, h.serial())

	srv := startCA(t, root, nil, map[string]api.NodeRole{"node1": api.NodeRole_NODE_ROLE_MANAGER})
	h.setTargets(deadAddr(t), srv.addr) // the first fails, the next answers
	h.clock.Advance(32 * time.Second)
	require.Eventually(t, func() bool { return h.sec.Credentials().Subject().Role == pki.OUManager }, 10*time.Second, 5*time.Millisecond)
	h.waitTimer(t)
	assert.Equal(t, int32(3), h.attempts.Load())
}

// TestRenewCertificateRefused shows a CA's refusal (a node removed from the
// store) is an error and leaves the credentials as they are.
func TestRenewCertificateRefused(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	srv := startCA(t, root, nil, nil)
	h := newHarness(t, pki.OUWorker, srv.addr)
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	before := h.sec.Credentials().KeyPair()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = h.sec.RenewCertificate(ctx)
	require.Error(t, err)
	assert.ErrorContains(t, err, "removed")
	assert.Equal(t, before, h.sec.Credentials().KeyPair())

	h.setTargets()
	assert.ErrorContains(t, h.sec.RenewCertificate(ctx), "no manager known")
}

// TestStop shows Stop ends the loop (TestMain checks no goroutine is left)
// and is idempotent, and that Start is too.
func TestStop(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	h := newHarness(t, pki.OUWorker)
	require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
	h.sec.Start()
	h.sec.Start()
	h.waitTimer(t)
	assert.Equal(t, 1, h.clock.Timers(), "one loop")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, h.sec.Stop(ctx))
	assert.Zero(t, h.clock.Timers(), "the loop stopped its timer")
	require.NoError(t, h.sec.Stop(ctx))
}

func TestJoinRefusals(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	other, err := pki.NewRootCA("cluster0000000000000000bb", 0)
	require.NoError(t, err)
	tokenFor := func(r *pki.RootCA) string {
		tok, err := pki.NewToken(r.Digest())
		require.NoError(t, err)
		return tok.String()
	}
	honest := startCA(t, root, nil, nil)
	rogue := startCA(t, root, other, nil) // serves root, but its own certificate is not from it

	for _, tc := range []struct {
		name, addr, token string
	}{
		{"a token of another cluster", honest.addr, tokenFor(other)},
		{"a manager whose certificate is not from the root it serves", rogue.addr, tokenFor(root)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dials atomic.Int32
			h := newHarness(t, pki.OUWorker)
			h.sec.cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
				dials.Add(1)
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, kp, err := h.sec.Join(ctx, tc.addr, JoinRequest{Token: tc.token})
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidToken)
			assert.ErrorIs(t, err, pki.ErrDigestMismatch)
			assert.Nil(t, resp)
			assert.Zero(t, kp)
			assert.Positive(t, dials.Load(), "it asked the manager")
			assert.Nil(t, h.sec.Credentials())
		})
	}

	for _, tok := range []string{"", "garbage", "SHLTKN-2-" + root.Digest() + "-secret", tokenFor(root) + "-extra"} {
		t.Run("malformed "+tok, func(t *testing.T) {
			var dials atomic.Int32
			h := newHarness(t, pki.OUWorker)
			h.sec.cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
				dials.Add(1)
				return nil, errors.New("no dialing expected")
			}
			_, _, err := h.sec.Join(context.Background(), deadAddr(t), JoinRequest{Token: tok})
			require.ErrorIs(t, err, errdefs.ErrInvalidToken)
			assert.NotErrorIs(t, err, pki.ErrDigestMismatch)
			assert.Zero(t, dials.Load(), "a malformed token is refused without dialing")
		})
	}
}

// TestFollowRoots shows a trust bundle holding the current root and a new
// one is trusted and saved, and that the loop then asks for a certificate
// from the new root; and that a bundle the certificate does not verify
// against is not applied.
func TestFollowRoots(t *testing.T) {
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	next, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	bundle := append(append(bytes.TrimSpace(append([]byte(nil), root.CertPEM...)), '\n'), next.CertPEM...)
	fromNext := issueKeyPair(t, next, pki.Subject{NodeID: "node2", Role: pki.OUWorker}, time.Hour)

	t.Run("current and new root", func(t *testing.T) {
		h := newHarness(t, pki.OUWorker) // no manager to renew at
		require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
		_, _, err := pki.VerifyCert(fromNext.CertPEM, h.sec.Credentials().Roots(), time.Now())
		require.ErrorIs(t, err, pki.ErrUnknownAuthority, "the new root is not trusted yet")

		h.start(t)
		h.waitTimer(t)
		assert.Zero(t, h.attempts.Load())
		h.sec.FollowRoots(nil) // ignored
		h.sec.FollowRoots(bundle)
		require.Eventually(t, func() bool { return bytes.Equal(bundle, h.sec.Credentials().KeyPair().RootPEM) }, 10*time.Second, 5*time.Millisecond)
		_, _, err = pki.VerifyCert(fromNext.CertPEM, h.sec.Credentials().Roots(), time.Now())
		assert.NoError(t, err, "the new root is trusted")
		_, _, err = pki.VerifyCert(h.sec.Credentials().KeyPair().CertPEM, h.sec.Credentials().Roots(), time.Now())
		assert.NoError(t, err, "and the old one still")

		// The credentials change first, then the files.
		require.Eventually(t, func() bool {
			saved, err := pki.LoadKeyPair(Dir(h.dir))
			return err == nil && bytes.Equal(bundle, saved.RootPEM)
		}, 10*time.Second, 5*time.Millisecond, "the roots are saved")

		require.Eventually(t, func() bool { return h.attempts.Load() >= 1 }, 10*time.Second, 5*time.Millisecond,
			"a certificate from the new root is asked for")
	})

	t.Run("a bundle without the certificate's root", func(t *testing.T) {
		h := newHarness(t, pki.OUWorker)
		require.NoError(t, h.sec.Adopt(issueKeyPair(t, root, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)))
		h.start(t)
		h.waitTimer(t)
		h.sec.FollowRoots(next.CertPEM)
		// The loop applies the roots before it plans, and plans a renewal at
		// once (the newest root did not issue the certificate).
		require.Eventually(t, func() bool { return h.attempts.Load() >= 1 }, 10*time.Second, 5*time.Millisecond)
		assert.Equal(t, root.CertPEM, h.sec.Credentials().KeyPair().RootPEM, "the current root stays until the certificate is renewed")
		saved, err := pki.LoadKeyPair(Dir(h.dir))
		require.NoError(t, err)
		assert.Equal(t, root.CertPEM, saved.RootPEM)
	})
}
