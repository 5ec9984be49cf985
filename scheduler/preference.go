package scheduler

import (
	"errors"
	"fmt"
	"strings"
)

// PreferenceSpread is the one placement preference strategy, as in Docker's
// --placement-pref: spread the tasks evenly over the values of a node label.
const PreferenceSpread = "spread"

// ErrInvalidPreference is matched (errors.Is) by every error that reports a
// malformed placement preference.
var ErrInvalidPreference = errors.New("invalid placement preference")

// PreferenceError reports a placement preference that breaks a rule. Its
// message names the preference as written and the rule, e.g.
// preference "spread=node.id": descriptor "node.id" must be node.labels.<key>.
type PreferenceError struct {
	Preference string // the preference text as given
	Rule       string // the rule it breaks
}

// Error implements error.
func (e *PreferenceError) Error() string {
	return fmt.Sprintf("preference %q: %s", e.Preference, e.Rule)
}

// Is reports whether target is ErrInvalidPreference.
func (e *PreferenceError) Is(target error) bool { return target == ErrInvalidPreference }

// Preference is one placement preference: spread the tasks of a service
// evenly over the values of the node label SpreadLabel, each value a group
// of nodes, and the nodes without the label one more group. Build one with
// ParsePreference; a hand-built Preference is checked by Validate and, at
// the latest, by Scheduler.Schedule.
//
// A task lists its preferences outermost first: with zone then rack, the
// tasks spread over the zones, and within each zone over its racks.
type Preference struct {
	// SpreadLabel is the node label key whose values the tasks spread
	// over, e.g. "zone" for spread=node.labels.zone. It keeps its case.
	SpreadLabel string
}

// String returns the preference in the form ParsePreference reads, e.g.
// "spread=node.labels.zone". ParsePreference(p.String()) returns p for every
// valid p.
func (p Preference) String() string {
	return PreferenceSpread + "=" + AttrNodeLabelPrefix + p.SpreadLabel
}

// ParsePreference parses "spread=node.labels.<key>", Docker's
// --placement-pref syntax. The strategy must be exactly "spread"; the
// node.labels. prefix may be in any ASCII letter case, as in constraints.
// The key must not be empty and follows the rules of constraint label keys:
// no white space, no '=' or '!'. Nothing is trimmed.
func ParsePreference(s string) (Preference, error) {
	fail := func(rule string) (Preference, error) {
		return Preference{}, &PreferenceError{Preference: s, Rule: rule}
	}
	const want = "(want spread=node.labels.<key>)"
	if s == "" {
		return fail("must not be empty " + want)
	}
	strategy, descriptor, ok := strings.Cut(s, "=")
	if !ok {
		return fail("must be <strategy>=<descriptor> " + want)
	}
	if strategy != PreferenceSpread {
		return fail(fmt.Sprintf("strategy %q is not supported %s", strategy, want))
	}
	if !hasLabelPrefix(descriptor) {
		return fail(fmt.Sprintf("descriptor %q must be node.labels.<key>", descriptor))
	}
	p := Preference{SpreadLabel: descriptor[len(AttrNodeLabelPrefix):]}
	if rule := p.rule(); rule != "" {
		return fail(rule)
	}
	return p, nil
}

// ParsePreferences parses each string with ParsePreference, keeping their
// order. It returns all the errors found, joined, and no preferences when
// there is any.
func ParsePreferences(ss []string) ([]Preference, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	out := make([]Preference, 0, len(ss))
	var errs []error
	for _, s := range ss {
		p, err := ParsePreference(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Validate checks a preference built by hand against the rules
// ParsePreference enforces.
func (p Preference) Validate() error {
	if rule := p.rule(); rule != "" {
		return &PreferenceError{Preference: p.String(), Rule: rule}
	}
	return nil
}

// rule returns the rule the preference breaks, or "".
func (p Preference) rule() string {
	if p.SpreadLabel == "" {
		return "label key is empty (want spread=node.labels.<key>)"
	}
	return labelKeyRule(p.SpreadLabel)
}

func preferencesEqual(a, b []Preference) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
