package orchestrator

import (
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/schedule"
	"github.com/shoalhq/shoal/scheduler"
)

// nodeMatcher decides whether a node satisfies a service's placement
// constraints, with the scheduler's own parser and matcher, so the global
// orchestrator and the scheduler never disagree about a node.
type nodeMatcher struct {
	cons []scheduler.Constraint
	err  error // set when the constraints do not parse: nothing matches
}

func newNodeMatcher(spec *api.TaskSpec) nodeMatcher {
	cons, err := scheduler.ParseConstraints(spec.GetPlacement().GetConstraints())
	return nodeMatcher{cons: cons, err: err}
}

func (m nodeMatcher) matches(n *api.Node) bool {
	if m.err != nil {
		return false
	}
	sn := schedule.SchedulerNode(n)
	return scheduler.Matches(m.cons, &sn)
}
