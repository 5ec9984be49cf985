package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// Op is the comparison operator of a placement constraint.
type Op int

const (
	// OpEq ("==") requires the node attribute to equal the value.
	OpEq Op = iota
	// OpNotEq ("!=") requires the node attribute to differ from the value.
	// A node without the label satisfies node.labels.<key>!=<value>.
	OpNotEq
)

// String returns the operator as written in a constraint: "==" or "!=".
func (o Op) String() string {
	switch o {
	case OpEq:
		return "=="
	case OpNotEq:
		return "!="
	default:
		return fmt.Sprintf("Op(%d)", int(o))
	}
}

// Attribute names accepted on the left-hand side of a constraint. Parsing
// accepts them in any ASCII letter case and stores them in the form below.
const (
	AttrNodeID       = "node.id"            // matched exactly
	AttrNodeHostname = "node.hostname"      // matched case-insensitively
	AttrNodeRole     = "node.role"          // "manager" or "worker", case-insensitive
	AttrNodeOS       = "node.platform.os"   // e.g. "linux", case-insensitive
	AttrNodeArch     = "node.platform.arch" // e.g. "amd64", case-insensitive
	// AttrNodeLabelPrefix starts a node label attribute, node.labels.<key>.
	// The label key keeps its case and the value is matched exactly.
	AttrNodeLabelPrefix = "node.labels."
)

// ErrInvalidConstraint is matched (errors.Is) by every error that reports a
// malformed constraint.
var ErrInvalidConstraint = errors.New("invalid constraint")

// ConstraintError reports a constraint that breaks a rule. Its message names
// the constraint as written and the rule, e.g.
// constraint "node.labels.zone=a": operator must be == or !=.
type ConstraintError struct {
	Constraint string // the constraint text as given
	Rule       string // the rule it breaks
}

// Error implements error.
func (e *ConstraintError) Error() string {
	return fmt.Sprintf("constraint %q: %s", e.Constraint, e.Rule)
}

// Is reports whether target is ErrInvalidConstraint.
func (e *ConstraintError) Is(target error) bool { return target == ErrInvalidConstraint }

// Constraint is one placement constraint such as node.labels.zone==a.
// Build one with ParseConstraint; a hand-built Constraint is checked by
// Validate and, at the latest, by Scheduler.Schedule.
type Constraint struct {
	Key   string // attribute, e.g. "node.role" or "node.labels.zone"
	Op    Op     // OpEq or OpNotEq
	Value string // compared value, non-empty, without surrounding white space
}

// String returns the constraint in the form ParseConstraint reads, e.g.
// "node.labels.zone==a". ParseConstraint(c.String()) returns c for every
// valid c.
func (c Constraint) String() string { return c.Key + c.Op.String() + c.Value }

// ParseConstraint parses "<attribute> <op> <value>", where op is == or !=
// and white space around the parts is ignored. The attribute is one of
// node.id, node.hostname, node.role, node.platform.os, node.platform.arch or
// node.labels.<key>. The value is the trimmed rest of the text after the
// first operator and must not be empty.
func ParseConstraint(s string) (Constraint, error) {
	fail := func(rule string) (Constraint, error) {
		return Constraint{}, &ConstraintError{Constraint: s, Rule: rule}
	}
	expr := strings.TrimSpace(s)
	if expr == "" {
		return fail("must not be empty")
	}
	i, op := findOp(expr)
	if i < 0 {
		return fail("operator must be == or !=")
	}
	key := strings.TrimSpace(expr[:i])
	value := strings.TrimSpace(expr[i+2:])
	if key == "" {
		return fail("attribute is missing before the operator")
	}
	canon, _, rule := canonicalKey(key)
	if rule != "" {
		return fail(rule)
	}
	if value == "" {
		return fail("value is missing after the operator")
	}
	return Constraint{Key: canon, Op: op, Value: value}, nil
}

// ParseConstraints parses each string with ParseConstraint. It returns all
// the errors found, joined, and no constraints when there is any.
func ParseConstraints(ss []string) ([]Constraint, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	out := make([]Constraint, 0, len(ss))
	var errs []error
	for _, s := range ss {
		c, err := ParseConstraint(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Validate checks a constraint built by hand against the rules
// ParseConstraint enforces. The attribute may be in any ASCII letter case.
func (c Constraint) Validate() error {
	_, err := compileConstraint(c)
	return err
}

// findOp returns the index and kind of the first "==" or "!=" in s, or -1.
func findOp(s string) (int, Op) {
	for i := 0; i+1 < len(s); i++ {
		if s[i+1] != '=' {
			continue
		}
		switch s[i] {
		case '=':
			return i, OpEq
		case '!':
			return i, OpNotEq
		}
	}
	return -1, OpEq
}

type attrKind uint8

const (
	attrID attrKind = iota
	attrHostname
	attrRole
	attrOS
	attrArch
	attrLabel
)

// canonicalKey maps an attribute to its canonical spelling and kind, or
// returns the rule it breaks.
func canonicalKey(key string) (string, attrKind, string) {
	switch {
	case equalFoldASCII(key, AttrNodeID):
		return AttrNodeID, attrID, ""
	case equalFoldASCII(key, AttrNodeHostname):
		return AttrNodeHostname, attrHostname, ""
	case equalFoldASCII(key, AttrNodeRole):
		return AttrNodeRole, attrRole, ""
	case equalFoldASCII(key, AttrNodeOS):
		return AttrNodeOS, attrOS, ""
	case equalFoldASCII(key, AttrNodeArch):
		return AttrNodeArch, attrArch, ""
	case hasLabelPrefix(key):
		label := key[len(AttrNodeLabelPrefix):]
		if label == "" {
			return "", 0, "label key is empty (want node.labels.<key>)"
		}
		if rule := labelKeyRule(label); rule != "" {
			return "", 0, rule
		}
		return AttrNodeLabelPrefix + label, attrLabel, ""
	default:
		return "", 0, fmt.Sprintf("unknown attribute %q (want node.id, node.hostname, node.role, "+
			"node.platform.os, node.platform.arch or node.labels.<key>)", key)
	}
}

// labelKeyRule returns the rule a non-empty node label key breaks, or "".
// Constraints and preferences share it.
func labelKeyRule(label string) string {
	if strings.IndexFunc(label, unicode.IsSpace) >= 0 {
		return fmt.Sprintf("label key %q must not contain white space", label)
	}
	if strings.ContainsAny(label, "=!") {
		return fmt.Sprintf("label key %q must not contain '=' or '!'", label)
	}
	return ""
}

// hasLabelPrefix reports whether s starts with AttrNodeLabelPrefix in any
// ASCII letter case.
func hasLabelPrefix(s string) bool {
	return len(s) >= len(AttrNodeLabelPrefix) && equalFoldASCII(s[:len(AttrNodeLabelPrefix)], AttrNodeLabelPrefix)
}

// equalFoldASCII reports whether s equals the lower-case ASCII string lower,
// ignoring ASCII letter case only (so byte offsets stay meaningful).
func equalFoldASCII(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// compiled is a validated constraint ready to be evaluated against nodes.
type compiled struct {
	kind  attrKind
	op    Op
	label string // label key for attrLabel
	value string
	text  string // canonical text for explanations
}

func compileConstraint(c Constraint) (compiled, error) {
	text := c.Key + c.Op.String() + c.Value
	fail := func(rule string) (compiled, error) {
		return compiled{}, &ConstraintError{Constraint: text, Rule: rule}
	}
	if c.Op != OpEq && c.Op != OpNotEq {
		return fail("operator must be == or !=")
	}
	if c.Key == "" {
		return fail("attribute is missing before the operator")
	}
	canon, kind, rule := canonicalKey(c.Key)
	if rule != "" {
		return fail(rule)
	}
	if c.Value == "" {
		return fail("value is missing after the operator")
	}
	if strings.TrimSpace(c.Value) != c.Value {
		return fail("value must not start or end with white space")
	}
	cc := compiled{kind: kind, op: c.Op, value: c.Value}
	if kind == attrLabel {
		cc.label = canon[len(AttrNodeLabelPrefix):]
	}
	cc.text = canon + c.Op.String() + c.Value
	return cc, nil
}

// matches reports whether node n satisfies the constraint.
func (c *compiled) matches(n *Node) bool {
	var eq bool
	switch c.kind {
	case attrID:
		eq = n.ID == c.value
	case attrHostname:
		eq = strings.EqualFold(n.Hostname, c.value)
	case attrRole:
		eq = strings.EqualFold(n.Role, c.value)
	case attrOS:
		eq = strings.EqualFold(n.OS, c.value)
	case attrArch:
		eq = strings.EqualFold(n.Arch, c.value)
	case attrLabel:
		v, ok := n.Labels[c.label]
		if !ok {
			return c.op == OpNotEq
		}
		eq = v == c.value
	}
	if c.op == OpNotEq {
		return !eq
	}
	return eq
}

// Matches reports whether node n satisfies every constraint in cons, with
// the same semantics the scheduler's filter uses. A constraint that does not
// validate matches no node.
func Matches(cons []Constraint, n *Node) bool {
	for _, c := range cons {
		cc, err := compileConstraint(c)
		if err != nil || !cc.matches(n) {
			return false
		}
	}
	return true
}
