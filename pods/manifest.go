package pods

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/autopod/autopod/atomicfile"
)

// ManifestName is the file in every image directory that describes it.
const ManifestName = "manifest.json"

// manifestVersion changes when the layout of image directories changes.
const manifestVersion = 1

// Manifest makes an image directory self-describing: what pod it holds,
// which CRIU and kernel made it, and a checksum of every file so that a
// damaged or tampered image is refused before CRIU touches it.
type Manifest struct {
	Version     int           `json:"version"`
	Pod         Spec          `json:"pod"`
	Created     time.Time     `json:"created"`
	Host        string        `json:"host"`
	Kernel      string        `json:"kernel"`
	CriuVersion string        `json:"criu_version"`
	InitPid     int           `json:"init_pid"`  // host pid at dump time
	InitHash    string        `json:"init_hash"` // the autopod init copy the pod runs
	LeftRunning bool          `json:"left_running"`
	Duration    time.Duration `json:"dump_duration_ns"`
	TotalBytes  int64         `json:"total_bytes"`
	Files       []ImageFile   `json:"files"`
}

// ImageFile is one file of an image directory.
type ImageFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ErrImageCorrupt marks an image directory whose files do not match its manifest.
var ErrImageCorrupt = errors.New("checkpoint image does not match its manifest")

// scanImages checksums every regular file in dir except the manifest.
func scanImages(dir string) ([]ImageFile, int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	var files []ImageFile
	var total int64
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == ManifestName {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, 0, err
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("checksum %s: %w", e.Name(), err)
		}
		files = append(files, ImageFile{Name: e.Name(), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		total += n
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return files, total, nil
}

// WriteManifest fills m.Files and m.TotalBytes from dir and writes the
// manifest durably into dir.
func WriteManifest(dir string, m *Manifest) error {
	files, total, err := scanImages(dir)
	if err != nil {
		return err
	}
	m.Version, m.Files, m.TotalBytes = manifestVersion, files, total
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, ManifestName), append(data, '\n'), 0o600)
}

// ReadManifest reads dir's manifest without verifying the images.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestName), err)
	}
	if m.Version != manifestVersion {
		return m, fmt.Errorf("%s: manifest version %d, this autopod reads %d", dir, m.Version, manifestVersion)
	}
	return m, nil
}

// VerifyImages checks every file listed in dir's manifest (size and
// SHA-256) and that no image file is missing or unlisted.
func VerifyImages(dir string) (Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return m, err
	}
	have, _, err := scanImages(dir)
	if err != nil {
		return m, err
	}
	got := map[string]ImageFile{}
	for _, f := range have {
		got[f.Name] = f
	}
	var errs []error
	for _, want := range m.Files {
		f, ok := got[want.Name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: missing", want.Name))
		case f.Size != want.Size:
			errs = append(errs, fmt.Errorf("%s: size %d, manifest says %d", want.Name, f.Size, want.Size))
		case f.SHA256 != want.SHA256:
			errs = append(errs, fmt.Errorf("%s: checksum mismatch", want.Name))
		}
		delete(got, want.Name)
	}
	for name := range got {
		errs = append(errs, fmt.Errorf("%s: not in manifest", name))
	}
	if len(errs) > 0 {
		return m, fmt.Errorf("%w (%s): %w", ErrImageCorrupt, dir, errors.Join(errs...))
	}
	return m, nil
}
