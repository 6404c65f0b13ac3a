package pods

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"google.golang.org/protobuf/proto"
)

// TestImageHierarchies: the directories a restore looks for in its yard
// are named as autopod names its yard's, for each kind of hierarchy.
func TestImageHierarchies(t *testing.T) {
	e := &cgroup.CgroupEntry{Controllers: []*cgroup.CgControllerEntry{
		{Cnames: []string{"cpu", "cpuacct"}},
		{Cnames: []string{"name=systemd"}},
		{Cnames: []string{""}},
		{Cnames: []string{"memory"}},
	}}
	msg, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	img := binary.LittleEndian.AppendUint32(nil, 0x54564319) // IMG_COMMON_MAGIC
	img = binary.LittleEndian.AppendUint32(img, 0x59383330)  // CGROUP_MAGIC
	img = binary.LittleEndian.AppendUint32(img, uint32(len(msg)))
	img = append(img, msg...)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.img"), img, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := imageHierarchies(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cpu,cpuacct", "systemd", "unified", "memory"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	var yard []string
	for _, h := range []cgHierarchy{"cpu,cpuacct", "name=systemd", "", "memory", "pids"} {
		yard = append(yard, h.yardDir())
	}
	if !subset(got, yard) {
		t.Errorf("%q not all in the yard's %q", got, yard)
	}
	if subset(got, yard[1:]) {
		t.Error("subset without cpu,cpuacct")
	}

	if err := os.WriteFile(filepath.Join(dir, "cgroup.img"), img[:len(img)-2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := imageHierarchies(dir); err == nil {
		t.Error("a truncated cgroup.img: no error")
	}
}
