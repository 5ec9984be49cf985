//go:build linux

package image

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
dup:x:1001:1001::/first:/bin/sh
dup:x:1002:1002::/second:/bin/sh
short:x:1003
   spaced:x:1004:1004::/spaced:/bin/sh   
`

const testGroup = `root:x:0:root
# a comment line
wheel:x:10:root,app
staff:x:50:app
audio:x:63:
app:x:1000:
other:x:2000:someone
`

func userRootfs(t *testing.T, passwd, group string) string {
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	if passwd != "" {
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte(passwd), 0o644))
	}
	if group != "" {
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc", "group"), []byte(group), 0o644))
	}
	return root
}

func TestLookupUser(t *testing.T) {
	root := userRootfs(t, testPasswd, testGroup)
	cases := []struct {
		spec string
		want User
		err  string
	}{
		{spec: "", want: User{UID: 0, GID: 0, AdditionalGIDs: []uint32{0, 10}, Home: "/root"}},
		{spec: "root", want: User{UID: 0, GID: 0, AdditionalGIDs: []uint32{0, 10}, Home: "/root"}},
		{spec: "app", want: User{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{10, 50}, Home: "/home/app"}},
		{spec: "1000", want: User{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{10, 50}, Home: "/home/app"}},
		{spec: "daemon", want: User{UID: 1, GID: 1, Home: "/usr/sbin"}},
		{spec: "app:staff", want: User{UID: 1000, GID: 50, Home: "/home/app"}},
		{spec: "app:63", want: User{UID: 1000, GID: 63, Home: "/home/app"}},
		{spec: "app:4242", want: User{UID: 1000, GID: 4242, Home: "/home/app"}},
		{spec: "1000:1000", want: User{UID: 1000, GID: 1000, Home: "/home/app"}},
		{spec: "4242", want: User{UID: 4242, GID: 0, Home: "/"}},
		{spec: "4242:4343", want: User{UID: 4242, GID: 4343, Home: "/"}},
		{spec: "4242:wheel", want: User{UID: 4242, GID: 10, Home: "/"}},
		{spec: "dup", want: User{UID: 1001, GID: 1001, Home: "/first"}},
		{spec: "short", want: User{UID: 1003, GID: 0, Home: ""}},
		{spec: "spaced", want: User{UID: 1004, GID: 1004, Home: "/spaced"}},
		{spec: "nobody", err: `image: user "nobody": unable to find user nobody: no matching entries in passwd file`},
		{spec: "app:nogroup", err: `unable to find group nogroup`},
		{spec: "2147483648", err: "range"},
		{spec: "app:-1", err: "range"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := LookupUser(root, tc.spec)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestLookupUserFiles(t *testing.T) {
	host := t.TempDir()
	hostPasswd := filepath.Join(host, "passwd")
	require.NoError(t, os.WriteFile(hostPasswd, []byte("hostonly:x:7:7::/host:/bin/sh\n"), 0o644))

	t.Run("missing files", func(t *testing.T) {
		root := t.TempDir()
		got, err := LookupUser(root, "")
		require.NoError(t, err)
		assert.Equal(t, User{Home: "/"}, got)
		got, err = LookupUser(root, "55:66")
		require.NoError(t, err)
		assert.Equal(t, User{UID: 55, GID: 66, Home: "/"}, got)
		_, err = LookupUser(root, "app")
		assert.ErrorContains(t, err, "no matching entries")
	})
	t.Run("malformed lines", func(t *testing.T) {
		root := userRootfs(t, "garbage\n::::\nweird:x:notanumber:12::/w\n\x00\x01:x:5:5\n", "g:x:bad:weird\n")
		got, err := LookupUser(root, "weird")
		require.NoError(t, err)
		// runc reads a number that does not parse as 0.
		assert.Equal(t, User{UID: 0, GID: 12, AdditionalGIDs: []uint32{0}, Home: "/w"}, got)
	})
	t.Run("overlong line", func(t *testing.T) {
		root := userRootfs(t, "a:x:1:1::/:"+string(make([]byte, 70*1024))+"\n", "")
		_, err := LookupUser(root, "b")
		assert.ErrorContains(t, err, "too long")
	})
	for name, target := range map[string]string{
		"absolute symlink out": hostPasswd,
		"relative symlink out": "../../../../../../../../.." + hostPasswd,
	} {
		t.Run(name, func(t *testing.T) {
			root := userRootfs(t, "", "")
			require.NoError(t, os.Symlink(target, filepath.Join(root, "etc", "passwd")))
			_, err := LookupUser(root, "hostonly")
			require.ErrorContains(t, err, "no matching entries", "the host's passwd is never read")
		})
	}
	t.Run("symlink inside the rootfs", func(t *testing.T) {
		root := userRootfs(t, "", "")
		require.NoError(t, os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, "usr", "lib", "passwd"), []byte("inside:x:9:9::/in:/bin/sh\n"), 0o644))
		require.NoError(t, os.Symlink("/usr/lib/passwd", filepath.Join(root, "etc", "passwd")))
		got, err := LookupUser(root, "inside")
		require.NoError(t, err)
		assert.Equal(t, uint32(9), got.UID)
	})
	t.Run("etc is a symlink out", func(t *testing.T) {
		root := t.TempDir()
		require.NoError(t, os.Symlink(host, filepath.Join(root, "etc")))
		_, err := LookupUser(root, "hostonly")
		require.ErrorContains(t, err, "no matching entries")
	})
	t.Run("symlink loop", func(t *testing.T) {
		root := userRootfs(t, "", "")
		require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(root, "etc", "passwd")))
		got, err := LookupUser(root, "7")
		require.NoError(t, err)
		assert.Equal(t, uint32(7), got.UID)
	})
	t.Run("a fifo is no file", func(t *testing.T) {
		root := userRootfs(t, "", "")
		require.NoError(t, mknod(filepath.Join(root, "etc", "passwd"), 'p', 0o644, 0, 0))
		_, err := LookupUser(root, "app")
		require.ErrorContains(t, err, "no matching entries")
	})
}
