package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shoalhq/shoal/runtime"
)

// taskEnv builds the environment of task t whose work directory is work:
// the host variables named by Config.PassEnv (PATH defaulting to
// DefaultPath), HOME and SHOAL_* variables, then Spec.Env. A later entry
// replaces an earlier one with the same key, keeping the earlier position.
func taskEnv(hostEnv []string, t runtime.Task, work string) []string {
	env := make([]string, 0, len(hostEnv)+8+len(t.Spec.Env))
	env = append(env, hostEnv...)
	env = append(env,
		"HOME="+work,
		"SHOAL_TASK_ID="+t.ID,
		"SHOAL_TASK_DIR="+work,
		"SHOAL_SERVICE_ID="+t.ServiceID,
		"SHOAL_SERVICE_NAME="+t.ServiceName,
		"SHOAL_TASK_SLOT="+strconv.FormatUint(t.Slot, 10),
		"SHOAL_NODE_ID="+t.NodeID,
	)
	if _, ok := lookupEnv(env, "PATH"); !ok {
		env = append([]string{"PATH=" + DefaultPath}, env...)
	}
	env = append(env, t.Spec.Env...)
	return dedupEnv(env)
}

// dedupEnv keeps, for each key, the value of its last entry at the position
// of its first entry.
func dedupEnv(env []string) []string {
	index := make(map[string]int, len(env))
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func lookupEnv(env []string, key string) (string, bool) {
	val, found := "", false
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			val, found = v, true
		}
	}
	return val, found
}

// resolveProgram finds the executable for name: a name with a slash is used
// as is (relative to cwd if relative); otherwise each absolute directory of
// pathList is searched in order. Empty or relative PATH entries, which
// would make the result depend on the working directory, are skipped.
func resolveProgram(name, pathList, cwd string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("program %q: %w", name, err)
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %q not found in PATH %q: %w", name, pathList, exec.ErrNotFound)
}

var errNotExecutable = errors.New("not an executable file")

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %w", exec.ErrNotFound, err)
		}
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s: %w", p, errNotExecutable)
	}
	return nil
}
