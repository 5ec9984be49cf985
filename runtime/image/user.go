package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// User is who a container's process runs as.
type User struct {
	UID, GID uint32
	// AdditionalGIDs are the supplementary groups: the groups of
	// /etc/group that list the user by name, when the spec names no group.
	AdditionalGIDs []uint32
	// Home is the user's home directory ("/" when /etc/passwd does not say).
	Home string
}

// maxID is the largest uid or gid accepted, as docker and runc do (the
// kernel allows more, but 32-bit systems and the OCI tools do not).
const maxID = 1<<31 - 1

// LookupUser resolves a user spec ("name", "uid", "name:group",
// "uid:gid", "uid:group", "name:gid"; "" is root) against rootfs/etc/passwd
// and rootfs/etc/group, with docker's rules (runc's libcontainer/user):
//
//   - The user is matched by name, or by uid when numeric; "" matches uid 0.
//     The first matching line wins and gives uid, gid and home. A name not
//     in the file is an error; a numeric uid not in it is used as it is,
//     with gid 0 and home "/".
//   - A group after ':' is matched by name or gid the same way and replaces
//     the gid; then there are no supplementary groups. Without a group, the
//     supplementary groups are the gids of the groups listing the user's
//     name.
//   - Ids must be 0 to 2^31-1. Lines are split on ':'; missing fields are
//     empty and numeric fields that do not parse read as 0, as in runc.
//     /etc/group skips '#' comments, /etc/passwd does not.
//
// The files are found inside rootfs as the container would see them:
// symbolic links are resolved with rootfs as '/', so none leads out of it.
// A file that is missing or is not a regular file counts as empty, as in
// docker.
func LookupUser(rootfs, user string) (User, error) {
	fail := func(err error) (User, error) { return User{}, fmt.Errorf("image: user %q: %w", user, err) }
	usr, grp, hasGroup := strings.Cut(user, ":")
	uArg, err := parseIDArg(usr)
	if err != nil {
		return fail(err)
	}
	var gArg *idArg
	if hasGroup {
		if gArg, err = parseIDArg(grp); err != nil {
			return fail(err)
		}
	}
	passwd := readUserFile(rootfs, "/etc/passwd")
	group := readUserFile(rootfs, "/etc/group")

	out := User{Home: "/"}
	matched := ""
	found := false
	var rangeErr error
	err = scanLines(passwd, false, 64*1024, func(f []string) bool {
		name, uid, gid, home := field(f, 0), atoi(field(f, 2)), atoi(field(f, 3)), field(f, 5)
		ok := uArg == nil && uid == 0 || uArg != nil && uArg.matches(name, uid)
		if ok {
			matched, found = name, true
			out.UID, out.GID, out.Home = uint32(uid), uint32(gid), home
			if uid < 0 || uid > maxID || gid < 0 || gid > maxID {
				rangeErr = errRange
			}
		}
		return ok
	})
	if err == nil {
		err = rangeErr
	}
	if err != nil {
		return fail(fmt.Errorf("unable to find user %s: %w", usr, err))
	}
	if !found && uArg != nil {
		if !uArg.numeric {
			return fail(fmt.Errorf("unable to find user %s: no matching entries in passwd file", uArg.name))
		}
		out.UID = uint32(uArg.id)
	}
	if gArg == nil && matched == "" {
		return out, nil
	}
	var gids []int
	err = scanLines(group, true, 1024*1024, func(f []string) bool {
		name, gid := field(f, 0), atoi(field(f, 2))
		if gArg != nil {
			if gArg.matches(name, gid) {
				gids = append(gids, gid)
				return true
			}
			return false
		}
		for _, member := range strings.Split(field(f, 3), ",") {
			if member != "" && member == matched {
				gids = append(gids, gid)
				break
			}
		}
		return false
	})
	if err != nil {
		return fail(fmt.Errorf("unable to find groups for user %s: %w", usr, err))
	}
	for _, g := range gids {
		if g < 0 || g > maxID {
			return fail(errRange)
		}
	}
	switch {
	case gArg != nil && len(gids) > 0:
		out.GID = uint32(gids[0])
	case gArg != nil && !gArg.numeric:
		return fail(fmt.Errorf("unable to find group %s: no matching entries in group file", gArg.name))
	case gArg != nil:
		out.GID = uint32(gArg.id)
	default:
		for _, g := range gids {
			out.AdditionalGIDs = append(out.AdditionalGIDs, uint32(g))
		}
	}
	return out, nil
}

var errRange = fmt.Errorf("uids and gids must be in range 0-%d", maxID)

// idArg is one side of a user spec.
type idArg struct {
	name    string
	id      int
	numeric bool
}

func (a *idArg) matches(name string, id int) bool {
	if a.numeric {
		return id == a.id
	}
	return name == a.name
}

// parseIDArg parses a user or group of a spec; "" is nil.
func parseIDArg(s string) (*idArg, error) {
	if s == "" {
		return nil, nil
	}
	id, err := strconv.Atoi(s)
	switch {
	case errors.Is(err, strconv.ErrSyntax):
		return &idArg{name: s}, nil
	case err != nil || id < 0 || id > maxID:
		return nil, errRange
	}
	return &idArg{name: s, id: id, numeric: true}, nil
}

func field(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

// atoi parses a numeric field, reading what does not parse as 0 (runc's
// rule for misbehaving files).
func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// scanLines calls fn with the ':'-separated fields of each non-blank line
// (trimmed; '#' lines skipped if comments) until fn returns true. A nil
// file has no lines.
func scanLines(data []byte, comments bool, maxLine int, fn func([]string) bool) error {
	if data == nil {
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, maxLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || comments && line[0] == '#' {
			continue
		}
		if fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}

// maxUserFile bounds how much of /etc/passwd or /etc/group is read.
const maxUserFile = 64 << 20

// readUserFile returns the content of name inside rootfs, or nil if it is
// missing, unreadable or not a regular file.
func readUserFile(rootfs, name string) []byte {
	p, err := resolveInRoot(rootfs, name)
	if err != nil {
		return nil
	}
	f, err := os.OpenFile(p, os.O_RDONLY|oNoFollow|oNonblock, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(f, maxUserFile))
	if err != nil {
		return nil
	}
	return b
}

// maxLinks bounds the symbolic links one resolution follows (the kernel's
// ELOOP limit is 40).
const maxLinks = 40

// resolveInRoot resolves name (absolute, slash-separated) inside root the
// way a process chrooted to root would: symbolic links are followed with
// absolute targets taken from root, and ".." stops at root. It returns a
// path on the host with no symbolic link in it (at the time of the call).
func resolveInRoot(root, name string) (string, error) {
	var done []string
	todo := strings.Split(strings.TrimPrefix(path.Clean("/"+name), "/"), "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		p := filepath.Join(append([]string{root}, append(done, c)...)...)
		fi, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			done = done[:0]
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return filepath.Join(append([]string{root}, done...)...), nil
}
