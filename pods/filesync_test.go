package pods

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestScanTreeWhileFilesComeAndGo: the scan while the pod runs leaves out
// what the pod removes under it (a file written, then renamed over another,
// as the test-bed's counter pod does) instead of failing the migration.
func TestScanTreeWhileFilesComeAndGo(t *testing.T) {
	dir := t.TempDir()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tmp := filepath.Join(dir, "count.new")
			if err := os.WriteFile(tmp, []byte{byte(i)}, 0o644); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, filepath.Join(dir, "count")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for range 2000 {
		tree, err := scanTree([]string{dir}, nil)
		if err != nil {
			t.Fatalf("scan while files come and go: %v", err)
		}
		if _, ok := tree.stamps[dir]; !ok {
			t.Fatalf("the root is missing from the scan")
		}
	}
	// A root that is not there is still an error.
	if _, err := scanTree([]string{filepath.Join(dir, "absent")}, nil); err == nil {
		t.Error("a missing root scanned without error")
	}
}
