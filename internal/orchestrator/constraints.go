package orchestrator

import (
	"strings"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/scheduler"
)

// nodeMatcher decides whether a node satisfies a service's placement
// constraints. Parsing is the scheduler's (scheduler.ParseConstraints), so
// both sides accept the same syntax; the scheduler does not export its
// matcher on api.Node, so this evaluates the parsed constraints itself with
// the scheduler's documented semantics.
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
	for _, c := range m.cons {
		if !constraintMatches(c, n) {
			return false
		}
	}
	return true
}

func roleName(r api.NodeRole) string {
	if r == api.NodeRole_NODE_ROLE_MANAGER {
		return scheduler.RoleManager
	}
	return scheduler.RoleWorker
}

func constraintMatches(c scheduler.Constraint, n *api.Node) bool {
	var eq bool
	switch {
	case c.Key == scheduler.AttrNodeID:
		eq = n.GetId() == c.Value
	case c.Key == scheduler.AttrNodeHostname:
		eq = strings.EqualFold(n.GetDescription().GetHostname(), c.Value)
	case c.Key == scheduler.AttrNodeRole:
		eq = strings.EqualFold(roleName(n.GetRole()), c.Value)
	case c.Key == scheduler.AttrNodeOS:
		eq = strings.EqualFold(n.GetDescription().GetPlatform().GetOs(), c.Value)
	case c.Key == scheduler.AttrNodeArch:
		eq = strings.EqualFold(n.GetDescription().GetPlatform().GetArch(), c.Value)
	case strings.HasPrefix(c.Key, scheduler.AttrNodeLabelPrefix):
		v, ok := n.GetSpec().GetLabels()[strings.TrimPrefix(c.Key, scheduler.AttrNodeLabelPrefix)]
		if !ok {
			// A node without the label satisfies only != constraints.
			return c.Op == scheduler.OpNotEq
		}
		eq = v == c.Value
	default:
		return false // unknown attribute: ParseConstraints rejects these
	}
	if c.Op == scheduler.OpNotEq {
		return !eq
	}
	return eq
}
