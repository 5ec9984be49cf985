package mesh

import (
	"testing"

	"go.uber.org/goleak"
)

// gossipLeaks are goroutines of serf and memberlist that their Shutdown does
// not wait for: an in-flight probe ends within ProbeInterval times the
// awareness multiplier, and serf's name-conflict query waits for its answers
// until it times out (see gossip's TestMain).
var gossipLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	goleak.IgnoreAnyFunction("github.com/hashicorp/serf/serf.(*Serf).resolveNodeConflict"),
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gossipLeaks...)
}
