package pods

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroups places a pod in its own cgroup on every hierarchy that matters
// and applies its limits. It handles both layouts in use: the unified
// cgroup v2 hierarchy of current distributions, and the v1 ("legacy" or
// "hybrid") layout with one mount per controller.
type cgroups struct {
	mount string // usually /sys/fs/cgroup
	name  string // directory under each hierarchy, e.g. "autopod"
}

// cgroupLayout tells which hierarchies exist.
type cgroupLayout struct {
	unified bool              // /sys/fs/cgroup is itself cgroup2
	v1      map[string]string // controller -> mount dir (v1/hybrid)
	v2dir   string            // cgroup2 mount (the root, or .../unified in hybrid)
}

func (c cgroups) layout() (cgroupLayout, error) {
	l := cgroupLayout{v1: map[string]string{}}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return l, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// mountinfo: ... mountpoint ... - fstype source superopts
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+4 || len(f) < 5 {
			continue
		}
		mp, fstype, opts := f[4], f[sep+1], f[sep+3]
		if !strings.HasPrefix(mp, c.mount) {
			continue
		}
		switch fstype {
		case "cgroup2":
			l.v2dir = mp
			if mp == c.mount {
				l.unified = true
			}
		case "cgroup":
			for _, o := range strings.Split(opts, ",") {
				switch o {
				case "memory", "cpu", "pids", "freezer", "cpuacct", "cpuset", "blkio", "devices":
					l.v1[o] = mp
				}
			}
		}
	}
	if !l.unified && len(l.v1) == 0 {
		return l, fmt.Errorf("no cgroup hierarchy mounted under %s", c.mount)
	}
	return l, nil
}

// controllers names the hierarchies a pod has its own cgroup in, as CRIU
// names them: the v1 controller names, and "" for the cgroup v2 hierarchy
// (its controller list in /proc/PID/cgroup is empty).
func (c cgroups) controllers() []string {
	l, err := c.layout()
	if err != nil {
		return nil
	}
	if l.unified {
		return []string{""}
	}
	var out []string
	for _, ctl := range []string{"memory", "cpu", "pids", "freezer"} {
		if _, ok := l.v1[ctl]; ok {
			out = append(out, ctl)
		}
	}
	if l.v2dir != "" {
		out = append(out, "")
	}
	return out
}

// freezerDir is the pod's cgroup that freezes it: the v1 freezer
// hierarchy where there is one, else the v2 cgroup (cgroup.freeze).
func (c cgroups) freezerDir(pod string) (dir string, v2 bool, err error) {
	l, err := c.layout()
	if err != nil {
		return "", false, err
	}
	if mp, ok := l.v1["freezer"]; ok && !l.unified {
		return filepath.Join(mp, c.name, pod), false, nil
	}
	if l.v2dir == "" {
		return "", false, fmt.Errorf("no freezer for pod %s", pod)
	}
	return filepath.Join(l.v2dir, c.name, pod), true, nil
}

// freeze stops (or thaws) every task of the pod at once and waits until
// the kernel reports the new state.
func (c cgroups) freeze(pod string, frozen bool) error {
	dir, v2, err := c.freezerDir(pod)
	if err != nil {
		return err
	}
	file, val, want := "freezer.state", "THAWED", "THAWED"
	if frozen {
		val, want = "FROZEN", "FROZEN"
	}
	if v2 {
		file, val = "cgroup.freeze", "0"
		if frozen {
			val = "1"
		}
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0); err != nil {
		return fmt.Errorf("cgroup %s: %w", filepath.Join(dir, file), err)
	}
	for i := 0; i < 500; i++ {
		if v2 {
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
			if strings.Contains(string(b), "frozen "+val) {
				return nil
			}
		} else if b, _ := os.ReadFile(filepath.Join(dir, file)); strings.TrimSpace(string(b)) == want {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("pod %s did not become %s", pod, want)
}

// relPath is the pod's cgroup as a path from the hierarchy's root.
func (c cgroups) relPath(pod string) string { return "/" + c.name + "/" + pod }

// dirs lists the pod's cgroup directories, one per hierarchy.
func (c cgroups) dirs(pod string) ([]string, error) {
	l, err := c.layout()
	if err != nil {
		return nil, err
	}
	var out []string
	if l.unified {
		return []string{filepath.Join(l.v2dir, c.name, pod)}, nil
	}
	seen := map[string]bool{}
	for _, ctl := range []string{"memory", "cpu", "pids", "freezer"} {
		if mp, ok := l.v1[ctl]; ok && !seen[mp] {
			seen[mp] = true
			out = append(out, filepath.Join(mp, c.name, pod))
		}
	}
	if l.v2dir != "" {
		out = append(out, filepath.Join(l.v2dir, c.name, pod))
	}
	return out, nil
}

// create makes the pod's cgroups and writes its limits.
func (c cgroups) create(pod string, lim Limits) error {
	l, err := c.layout()
	if err != nil {
		return err
	}
	dirs, err := c.dirs(pod)
	if err != nil {
		return err
	}
	if l.unified {
		// Controllers must be enabled in every ancestor's subtree_control.
		parent := filepath.Join(l.v2dir, c.name)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
		for _, d := range []string{l.v2dir, parent} {
			for _, ctl := range []string{"+memory", "+cpu", "+pids"} {
				_ = os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(ctl), 0)
			}
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
	}
	w := func(dir, file, val string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0); err != nil {
			return fmt.Errorf("cgroup %s/%s = %s: %w", dir, file, val, err)
		}
		return nil
	}
	if l.unified {
		// Only the limits the pod asks for: a v2 tree may lack a controller
		// (a container's, say), and then an unlimited pod must still start.
		d := dirs[0]
		var kvs [][2]string
		if lim.MemoryBytes > 0 {
			kvs = append(kvs, [2]string{"memory.max", strconv.FormatInt(lim.MemoryBytes, 10)})
		}
		if lim.Pids > 0 {
			kvs = append(kvs, [2]string{"pids.max", strconv.FormatInt(lim.Pids, 10)})
		}
		if lim.CPUWeight > 0 {
			kvs = append(kvs, [2]string{"cpu.weight", strconv.FormatUint(lim.CPUWeight, 10)})
		}
		for _, kv := range kvs {
			if err := w(d, kv[0], kv[1]); err != nil {
				return fmt.Errorf("%w (is the controller enabled in %s's cgroup.subtree_control?)", err, filepath.Dir(d))
			}
		}
		return nil
	}
	if mp, ok := l.v1["memory"]; ok {
		v := "-1"
		if lim.MemoryBytes > 0 {
			v = strconv.FormatInt(lim.MemoryBytes, 10)
		}
		if err := w(filepath.Join(mp, c.name, pod), "memory.limit_in_bytes", v); err != nil {
			return err
		}
	}
	if mp, ok := l.v1["pids"]; ok {
		v := "max"
		if lim.Pids > 0 {
			v = strconv.FormatInt(lim.Pids, 10)
		}
		if err := w(filepath.Join(mp, c.name, pod), "pids.max", v); err != nil {
			return err
		}
	}
	if mp, ok := l.v1["cpu"]; ok {
		if err := w(filepath.Join(mp, c.name, pod), "cpu.shares", strconv.FormatUint(weightToShares(lim.CPUWeight), 10)); err != nil {
			return err
		}
	}
	return nil
}

// weightToShares maps a cgroup v2 cpu.weight (1..10000, default 100) to v1
// cpu.shares (2..262144, default 1024), the conversion runc and systemd use.
func weightToShares(w uint64) uint64 {
	if w == 0 {
		return 1024
	}
	return 2 + ((w-1)*262142)/9999
}

// join moves pid into the pod's cgroups.
func (c cgroups) join(pod string, pid int) error {
	dirs, err := c.dirs(pod)
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", d, err)
		}
	}
	return nil
}

// procs lists the pids left in the pod's cgroups.
func (c cgroups) procs(pod string) []int {
	dirs, _ := c.dirs(pod)
	seen := map[int]bool{}
	var out []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// remove deletes the pod's cgroups, waiting briefly for exiting tasks.
func (c cgroups) remove(pod string) error {
	dirs, err := c.dirs(pod)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		var err error
		for i := 0; i < 50; i++ {
			err = os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
