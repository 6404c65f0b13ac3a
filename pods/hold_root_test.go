//go:build roottest

package pods

import (
	"context"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// TestHoldCostsTheLinkNothing floods a pod's address with pings while a
// migration's traffic hold is set up and taken down again and again, as
// every migration does before its freeze and after it: not one ping may
// go missing. Grafting or deleting a qdisc deactivates the link for a
// moment and drops what is sent to the pod then; buildNetns gives the pod's
// veth its clsact qdisc once, and holds add and delete filters only.
func TestHoldCostsTheLinkNothing(t *testing.T) {
	ctx := context.Background()
	const br, ns = "aptesthold0", "aptesthold"
	must := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	exec.Command("ip", "link", "del", br).Run()
	exec.Command("ip", "netns", "del", ns).Run()
	must("ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	must("ip", "addr", "add", "10.98.7.1/24", "dev", br)
	must("ip", "link", "set", br, "up")
	must("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	s := Spec{Name: "holdtest", Network: NetworkSpec{Address: netip.MustParsePrefix("10.98.7.2/24"),
		Gateway: netip.MustParseAddr("10.98.7.1"), Bridge: br}}
	if err := buildNetns(ctx, s, "/run/netns/"+ns, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostVeth(s.Name)).Run() })
	must("ping", "-c", "1", "-W", "2", "10.98.7.2") // the bridge port forwards

	const count = 600000 // 2-3 s
	ping := exec.Command("ping", "-f", "-q", "-i", "0", "-c", strconv.Itoa(count), "10.98.7.2")
	out := make(chan []byte, 1)
	go func() { b, _ := ping.CombinedOutput(); out <- b }()
	cycles := 0
	for done := false; !done; {
		h, err := prepareHold(ctx, hostVeth(s.Name), cycles%2 == 0)
		if err != nil {
			t.Fatal(err)
		}
		h.release()
		cycles++
		select {
		case b := <-out:
			m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindSubmatch(b)
			if m == nil {
				t.Fatalf("ping said: %s", b)
			}
			sent, got := string(m[1]), string(m[2])
			t.Logf("%s pings sent, %s answered, through %d holds set up and taken down", sent, got, cycles)
			if sent != got {
				t.Fatalf("%s of %s pings lost through %d holds set up and taken down", diff(sent, got), sent, cycles)
			}
			if cycles < 10 {
				t.Fatalf("only %d holds while the pings ran: too few to tell", cycles)
			}
			done = true
		default:
		}
	}
}

func diff(a, b string) string {
	x, _ := strconv.Atoi(a)
	y, _ := strconv.Atoi(b)
	return strconv.Itoa(x - y)
}
