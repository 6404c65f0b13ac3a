package pods

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// statFields returns the fields of /proc/PID/stat from field 3 (state)
// on: the command name before them may hold spaces and parentheses.
func statFields(pid int, need int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < need {
		return nil, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return f, nil
}

// procStartTime returns field 22 of /proc/PID/stat (start time in clock
// ticks since boot). Together with the pid it identifies a process across
// agent restarts: a reused pid has another start time.
func procStartTime(pid int) (uint64, error) {
	f, err := statFields(pid, 20) // field 22 is f[19]
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] != 'Z' && s[i+2] != 'X'
}

// childrenOf returns the child processes of pid ("self" or a number):
// those any of its threads forked (/proc/PID/task/TID/children).
func childrenOf(pid string) []int {
	var pids []int
	tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/children")
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	return pids
}

// hasChildren reports whether any thread of pid has a child process.
func hasChildren(pid int) bool {
	return len(childrenOf(strconv.Itoa(pid))) > 0
}

// childrenRunning returns the child processes of this one that run the
// binary exe.
func childrenRunning(exe string) []int {
	want, err := os.Stat(exe)
	if err != nil {
		return nil
	}
	var pids []int
	for _, pid := range childrenOf("self") {
		if fi, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && os.SameFile(fi, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsPid maps a host pid to its pid inside its innermost pid namespace.
func nsPid(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			fs := strings.Fields(v)
			if n, err := strconv.Atoi(fs[len(fs)-1]); err == nil {
				return n
			}
		}
	}
	return 0
}

// waitExit blocks until pid exits, using a pidfd so that it works for
// children and for adopted pods alike; for children it also reaps them.
func waitExit(pid int) (status string) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err == unix.EINTR {
				continue
			}
			break
		}
		unix.Close(fd)
	}
	var ws unix.WaitStatus
	if p, err := unix.Wait4(pid, &ws, 0, nil); err == nil && p == pid {
		switch {
		case ws.Signaled():
			return "killed by signal " + unix.SignalName(ws.Signal())
		case ws.Exited():
			return "exit status " + strconv.Itoa(ws.ExitStatus())
		}
	}
	return "exited"
}

// lookupUser resolves a pod's user field against the passwd and group
// files of the pod's root: "name", "uid" or "uid:gid".
func lookupUser(root, user string) (uid, gid int, groups []int, err error) {
	if user == "" || user == "root" {
		return 0, 0, nil, nil
	}
	if u, g, ok := strings.Cut(user, ":"); ok {
		if uid, err = strconv.Atoi(u); err == nil {
			gid, err = strconv.Atoi(g)
		}
		if err != nil {
			return 0, 0, nil, fmt.Errorf("user %q: %w", user, err)
		}
		return uid, gid, nil, nil
	}
	numeric, numErr := strconv.Atoi(user)
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil && numErr != nil {
		return 0, 0, nil, fmt.Errorf("user %q: %w", user, err)
	}
	found := false
	name := user
	for _, l := range strings.Split(string(passwd), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 4 {
			continue
		}
		u, _ := strconv.Atoi(f[2])
		if f[0] == user || (numErr == nil && u == numeric) {
			uid, _ = strconv.Atoi(f[2])
			gid, _ = strconv.Atoi(f[3])
			name, found = f[0], true
			break
		}
	}
	if !found {
		if numErr == nil {
			return numeric, numeric, nil, nil
		}
		return 0, 0, nil, fmt.Errorf("user %q not found in %s", user, filepath.Join(root, "etc/passwd"))
	}
	group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	for _, l := range strings.Split(string(group), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 4 {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == name {
				if g, err := strconv.Atoi(f[2]); err == nil && g != gid {
					groups = append(groups, g)
				}
			}
		}
	}
	return uid, gid, groups, nil
}
