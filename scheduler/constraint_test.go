package scheduler

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseConstraintValid(t *testing.T) {
	tests := []struct {
		in   string
		want Constraint
	}{
		{"node.id==abc", Constraint{AttrNodeID, OpEq, "abc"}},
		{"node.hostname!=web-1", Constraint{AttrNodeHostname, OpNotEq, "web-1"}},
		{"node.role==manager", Constraint{AttrNodeRole, OpEq, "manager"}},
		{"node.platform.os==linux", Constraint{AttrNodeOS, OpEq, "linux"}},
		{"node.platform.arch!=arm64", Constraint{AttrNodeArch, OpNotEq, "arm64"}},
		{"node.labels.zone==a", Constraint{"node.labels.zone", OpEq, "a"}},
		{"  node.labels.zone  ==  eu west  ", Constraint{"node.labels.zone", OpEq, "eu west"}},
		{"NODE.ROLE==Worker", Constraint{AttrNodeRole, OpEq, "Worker"}},
		{"Node.Labels.Zone==A", Constraint{"node.labels.Zone", OpEq, "A"}},
		{"node.labels.com.example.tier==gold", Constraint{"node.labels.com.example.tier", OpEq, "gold"}},
		{"node.labels.k===x", Constraint{"node.labels.k", OpEq, "=x"}},
		{"node.labels.k==a==b", Constraint{"node.labels.k", OpEq, "a==b"}},
		{"node.labels.k!=!=", Constraint{"node.labels.k", OpNotEq, "!="}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseConstraint(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			back, err := ParseConstraint(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, back)
			assert.NoError(t, got.Validate())
		})
	}
}

func TestParseConstraintInvalid(t *testing.T) {
	const want = "(want node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<key>)"
	tests := []struct {
		in, err string
	}{
		{"", `constraint "": must not be empty`},
		{"   ", `constraint "   ": must not be empty`},
		{"node.labels.zone=a", `constraint "node.labels.zone=a": operator must be == or !=`},
		{"node.role", `constraint "node.role": operator must be == or !=`},
		{"node.role<>manager", `constraint "node.role<>manager": operator must be == or !=`},
		{"node.foo==x", `constraint "node.foo==x": unknown attribute "node.foo" ` + want},
		{"engine.labels.a==x", `constraint "engine.labels.a==x": unknown attribute "engine.labels.a" ` + want},
		{"==x", `constraint "==x": attribute is missing before the operator`},
		{"node.role==", `constraint "node.role==": value is missing after the operator`},
		{"node.role!=   ", `constraint "node.role!=   ": value is missing after the operator`},
		{"node.labels.==x", `constraint "node.labels.==x": label key is empty (want node.labels.<key>)`},
		{"node.labels.my key==x", `constraint "node.labels.my key==x": label key "my key" must not contain white space`},
		{"node.labels.a=b==c", `constraint "node.labels.a=b==c": label key "a=b" must not contain '=' or '!'`},
		{"node.labels.a!b==c", `constraint "node.labels.a!b==c": label key "a!b" must not contain '=' or '!'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseConstraint(tt.in)
			require.Error(t, err)
			assert.EqualError(t, err, tt.err)
			assert.ErrorIs(t, err, ErrInvalidConstraint)
			var ce *ConstraintError
			require.True(t, errors.As(err, &ce))
			assert.Equal(t, tt.in, ce.Constraint)
		})
	}
}

func TestParseConstraints(t *testing.T) {
	cs, err := ParseConstraints([]string{"node.role==worker", "node.labels.zone!=b"})
	require.NoError(t, err)
	assert.Equal(t, []Constraint{{AttrNodeRole, OpEq, "worker"}, {"node.labels.zone", OpNotEq, "b"}}, cs)

	cs, err = ParseConstraints(nil)
	require.NoError(t, err)
	assert.Empty(t, cs)

	cs, err = ParseConstraints([]string{"node.role==worker", "bad", "node.x==1"})
	assert.Nil(t, cs)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidConstraint)
	assert.Contains(t, err.Error(), `constraint "bad": operator must be == or !=`)
	assert.Contains(t, err.Error(), `constraint "node.x==1": unknown attribute "node.x"`)
}

func TestConstraintValidate(t *testing.T) {
	assert.NoError(t, Constraint{Key: "Node.Role", Op: OpEq, Value: "x"}.Validate())
	assert.EqualError(t, Constraint{Key: "node.role", Op: Op(7), Value: "x"}.Validate(),
		`constraint "node.roleOp(7)x": operator must be == or !=`)
	assert.EqualError(t, Constraint{Key: "node.role", Op: OpEq, Value: " x"}.Validate(),
		`constraint "node.role== x": value must not start or end with white space`)
	assert.EqualError(t, Constraint{Key: "node.role", Op: OpEq}.Validate(),
		`constraint "node.role==": value is missing after the operator`)
	assert.EqualError(t, Constraint{Op: OpEq, Value: "x"}.Validate(),
		`constraint "==x": attribute is missing before the operator`)
	err := Constraint{Key: "node.bogus", Op: OpNotEq, Value: "x"}.Validate()
	assert.ErrorIs(t, err, ErrInvalidConstraint)
}

func TestOpString(t *testing.T) {
	assert.Equal(t, "==", OpEq.String())
	assert.Equal(t, "!=", OpNotEq.String())
	assert.Equal(t, "Op(5)", Op(5).String())
}

func TestConstraintMatches(t *testing.T) {
	n := &Node{ID: "Node1", Hostname: "Web-1", Role: RoleManager, OS: "Linux", Arch: "AMD64",
		Labels: map[string]string{"zone": "EU", "empty": ""}}
	tests := []struct {
		c    string
		want bool
	}{
		{"node.id==Node1", true},
		{"node.id==node1", false}, // IDs compare exactly
		{"node.id!=node1", true},
		{"node.hostname==web-1", true}, // case-insensitive
		{"node.hostname!=WEB-1", false},
		{"node.role==MANAGER", true},
		{"node.role==worker", false},
		{"node.role!=worker", true},
		{"node.platform.os==linux", true},
		{"node.platform.arch==amd64", true},
		{"node.platform.arch!=arm64", true},
		{"node.labels.zone==EU", true},
		{"node.labels.zone==eu", false}, // label values compare exactly
		{"node.labels.zone!=eu", true},
		{"node.labels.Zone==EU", false}, // label keys compare exactly
		{"node.labels.missing==x", false},
		{"node.labels.missing!=x", true},
	}
	for _, tt := range tests {
		t.Run(tt.c, func(t *testing.T) {
			c, err := ParseConstraint(tt.c)
			require.NoError(t, err)
			cc, err := compileConstraint(c)
			require.NoError(t, err)
			assert.Equal(t, tt.want, cc.matches(n))
		})
	}
}

func FuzzParseConstraint(f *testing.F) {
	for _, s := range []string{
		"node.id==abc", "node.hostname!=h", "node.role==manager", "NODE.PLATFORM.OS==linux",
		"node.platform.arch!=arm64", "node.labels.zone==a", " node.labels.a == b ", "node.labels.k===x",
		"node.labels.zone=a", "node.foo==x", "", "==", "!=", "node.labels.==x", "node.labels.a b==c",
		"node.labels.k!==x", "node.role==\u00a0x\u00a0", "node.labels.\u212a==x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConstraint(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidConstraint) {
				t.Fatalf("error %v does not match ErrInvalidConstraint", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed %q to %#v which does not validate: %v", s, c, err)
		}
		back, err := ParseConstraint(c.String())
		if err != nil {
			t.Fatalf("String() %q of %#v does not parse: %v", c.String(), c, err)
		}
		if back != c {
			t.Fatalf("round trip of %q: %#v became %#v", s, c, back)
		}
	})
}
