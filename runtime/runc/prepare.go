package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
	"github.com/shoalhq/shoal/runtime/network"
	"github.com/shoalhq/shoal/runtime/runc/shim"
)

// Prepare pulls the image (errors a registry gives for an image that cannot
// be pulled wrap runtime.ErrInvalidTask: unauthorized, not found, a digest
// that does not match, no manifest for the node's platform), mounts the
// container's root filesystem, resolves its user, attaches it to the
// node's bridge, creates its volumes and writes its OCI bundle.
func (c *Controller) Prepare(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.prepareMu.Lock()
	defer c.prepareMu.Unlock()
	c.mu.Lock()
	removed, prepared := c.isRemoved, c.prepared
	c.mu.Unlock()
	switch {
	case removed:
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case prepared:
		return nil
	}
	rec, sp, err := c.prepare(ctx)
	if err != nil {
		if sp != nil {
			sp.dismiss()
		}
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isRemoved {
		sp.dismiss()
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	}
	c.prepared, c.prep, c.spawn = true, rec, sp
	c.log.Debug("container prepared", "image", rec.ImageDigest, "rootfs", rec.Rootfs)
	return nil
}

func (c *Controller) prepare(ctx context.Context) (preparedRecord, *spawned, error) {
	rec, err := c.prepareFiles(ctx)
	if err != nil {
		return rec, nil, err
	}
	// The shim starts (and initializes) while the rest is prepared.
	sp, err := c.spawnShim()
	if err != nil {
		return rec, nil, err
	}
	rec, err = c.prepareContainer(ctx, rec)
	return rec, sp, err
}

// prepareFiles creates the container's directory and its task record.
func (c *Controller) prepareFiles(ctx context.Context) (preparedRecord, error) {
	var rec preparedRecord
	if err := c.rt.setup(ctx); err != nil {
		return rec, err
	}
	if err := os.MkdirAll(filepath.Join(c.dir, shim.DirBundle), 0o700); err != nil {
		return rec, err
	}
	stored := c.task
	stored.Spec.RegistryAuth = runtime.RegistryAuth{} // credentials never reach the disk
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, fileTask), stored); err != nil {
		return rec, err
	}
	return rec, nil
}

// prepareContainer pulls, mounts, attaches and writes the bundle.
func (c *Controller) prepareContainer(ctx context.Context, rec preparedRecord) (preparedRecord, error) {
	s := c.task.Spec
	img, err := c.rt.images.Pull(ctx, s.Image, s.RegistryAuth)
	if err != nil && ctx.Err() == nil {
		// The store may have the image already (pulled before, or loaded
		// from a layout or a tarball): run that one, as docker does when a
		// pull fails.
		if local, lerr := c.rt.images.Get(s.Image); lerr == nil {
			c.log.Warn("pulling the image failed; running the copy the node has", "image", s.Image, "digest", local.Digest, "err", err)
			img, err = local, nil
		}
	}
	if err != nil {
		if pullRefused(err) {
			return rec, fmt.Errorf("%w: pulling %s: %w", runtime.ErrInvalidTask, s.Image, err)
		}
		return rec, fmt.Errorf("pulling %s: %w", s.Image, err)
	}
	rec.ImageDigest, rec.Image = img.Digest, img.Config
	// The network namespace is made while the root filesystem is mounted:
	// neither needs the other.
	type attached struct {
		att *network.Attachment
		err error
	}
	attachCh := make(chan attached, 1)
	if s.HostNetwork {
		attachCh <- attached{}
	} else {
		go func() {
			att, err := c.rt.bridge.Attach(ctx, c.task.ID)
			attachCh <- attached{att, err}
		}()
	}
	rootfs, err := c.rt.images.Mount(ctx, img.Digest, c.task.ID)
	atr := <-attachCh
	if err != nil {
		return rec, fmt.Errorf("mounting the root filesystem: %w", err)
	}
	rec.Rootfs = rootfs
	userSpec := s.User
	if userSpec == "" {
		userSpec = img.Config.User
	}
	u, err := image.LookupUser(rootfs, userSpec)
	if err != nil {
		return rec, fmt.Errorf("%w: Spec.User: %w", runtime.ErrInvalidTask, err)
	}
	rec.UID, rec.GID = u.UID, u.GID
	rec.StopSignal = s.StopSignal
	if rec.StopSignal == "" && img.Config.StopSignal != "" {
		if _, err := runtime.ParseSignal(img.Config.StopSignal); err == nil {
			rec.StopSignal = img.Config.StopSignal
		}
	}
	hostname := s.Hostname
	if hostname == "" {
		hostname = c.task.ID
		if len(hostname) > 12 {
			hostname = hostname[:12]
		}
	}
	att := atr.att
	if atr.err != nil {
		return rec, fmt.Errorf("attaching to the node's bridge: %w", atr.err)
	}
	if att != nil {
		rec.Addr = att.Addr.String()
		var maps []network.PortMapping
		for _, p := range s.Ports {
			if p.HostPort != 0 {
				maps = append(maps, network.PortMapping{HostPort: p.HostPort, Target: p.Target, Protocol: p.EffectiveProtocol()})
			}
		}
		if len(maps) > 0 {
			if err := c.rt.bridge.Publish(ctx, c.task.ID, maps); err != nil {
				return rec, fmt.Errorf("publishing host ports: %w", err)
			}
		}
	}
	volumes := make(map[string]string)
	for _, m := range s.Mounts {
		switch m.Type {
		case runtime.MountVolume:
			d := c.rt.volumeDir(m.Source)
			if err := os.MkdirAll(d, 0o755); err != nil {
				return rec, fmt.Errorf("volume %q: %w", m.Source, err)
			}
			volumes[m.Source] = d
		case runtime.MountBind:
			if _, err := os.Stat(m.Source); err != nil {
				return rec, fmt.Errorf("%w: bind mount source: %w", runtime.ErrInvalidTask, err)
			}
		}
	}
	files, err := c.writeEtcFiles(hostname, att)
	if err != nil {
		return rec, err
	}
	in := bundleInput{
		Task:         c.task,
		Image:        imageConfig{Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env, WorkingDir: img.Config.WorkingDir},
		Rootfs:       rootfs,
		User:         resolvedUser{UID: u.UID, GID: u.GID, AdditionalGIDs: u.AdditionalGIDs, Home: u.Home},
		Hostname:     hostname,
		HostsFile:    files[0],
		HostnameFile: files[1],
		ResolvConf:   files[2],
		InitPath:     c.rt.initPath,
		VolumePaths:  volumes,
		CgroupsPath:  c.rt.CgroupPath(c.task.ID),
		Seccomp:      c.rt.seccompProfile(),
	}
	if att != nil {
		in.NetnsPath = att.NetnsPath
	}
	spec, err := buildSpec(in)
	if err != nil {
		return rec, err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return rec, err
	}
	if err := os.WriteFile(filepath.Join(c.dir, shim.DirBundle, "config.json"), b, 0o600); err != nil {
		return rec, err
	}
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, filePrepared), rec); err != nil {
		return rec, err
	}
	return rec, nil
}

// pullRefused reports whether a pull failed for a reason that retrying the
// same spec on this node will not fix.
func pullRefused(err error) bool {
	for _, e := range []error{image.ErrUnauthorized, image.ErrNotFound, image.ErrDigestMismatch, image.ErrNoPlatform, image.ErrUnsafeLayer} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// writeEtcFiles writes the container's /etc/hosts, /etc/hostname and
// /etc/resolv.conf into its directory. With host networking the node's
// hosts and resolv.conf are used as they are.
func (c *Controller) writeEtcFiles(hostname string, att *network.Attachment) ([3]string, error) {
	var out [3]string
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if att != nil {
		hosts += att.Addr.String() + "\t" + hostname + "\n"
	} else {
		hosts += "127.0.1.1\t" + hostname + "\n"
	}
	resolv, err := containerResolvConf(att == nil)
	if err != nil {
		return out, err
	}
	for i, f := range []struct{ name, content string }{
		{"hosts", hosts}, {"hostname", hostname + "\n"}, {"resolv.conf", resolv},
	} {
		// Written in place: until prepared.json is, the container's
		// directory is not a prepared container, whatever it holds.
		p := filepath.Join(c.dir, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			return out, err
		}
		out[i] = p
	}
	return out, nil
}

// containerResolvConf is the node's resolv.conf, with nameservers on
// loopback dropped in a container of its own network (they are not
// reachable from there: docker does the same) and Google's public servers
// used when none is left.
func containerResolvConf(hostNetwork bool) (string, error) {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if hostNetwork {
		return string(b), nil
	}
	var lines []string
	servers := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.IsLoopback() {
				continue
			}
			servers++
		}
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if servers == 0 {
		lines = append(lines, "nameserver 8.8.8.8", "nameserver 8.8.4.4")
	}
	return strings.Join(lines, "\n") + "\n", nil
}
