package scheduler

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMatches(t *testing.T) {
	n := &Node{ID: "n1", Hostname: "Web-1", Role: RoleWorker, OS: "linux", Arch: "amd64", Labels: map[string]string{"zone": "a"}}
	tests := []struct {
		cons []string
		want bool
	}{
		{nil, true},
		{[]string{"node.labels.zone==a"}, true},
		{[]string{"node.labels.zone!=a"}, false},
		{[]string{"node.labels.disk!=ssd"}, true},
		{[]string{"node.labels.disk==ssd"}, false},
		{[]string{"node.hostname==web-1", "node.role==worker"}, true},
		{[]string{"node.role==manager"}, false},
		{[]string{"node.platform.os==linux", "node.platform.arch!=arm64"}, true},
		{[]string{"node.id==n1", "node.labels.zone==b"}, false},
	}
	for _, tc := range tests {
		cons, err := ParseConstraints(tc.cons)
		require.NoError(t, err)
		assert.Equal(t, tc.want, Matches(cons, n), "%v", tc.cons)
	}
	assert.False(t, Matches([]Constraint{{Key: "node.nope", Op: OpEq, Value: "x"}}, n), "invalid constraints match nothing")
}
