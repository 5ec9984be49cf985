package dispatch

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
)

func templateTask(slot uint64) *api.Task {
	return &api.Task{Id: "task1", ServiceId: "svc1", ServiceName: "web", Slot: slot, NodeId: "node1",
		ServiceLabels: map[string]string{"tier": "front"}}
}

var templateNode = &api.NodeDescription{Hostname: "host-a", Platform: &api.Platform{Os: "linux", Arch: "arm64"}}

func TestExpandTemplate(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		slot    uint64 // 0: a global service's task
		node    *api.NodeDescription
		want    string
		wantErr string
	}{
		{name: "plain text", text: "web-box", slot: 1, want: "web-box"},
		{name: "empty", text: "", slot: 1, want: ""},
		{name: "service and slot", text: "{{.Service.Name}}-{{.Task.Slot}}", slot: 3, want: "web-3"},
		{name: "ids", text: "{{.Service.ID}}.{{.Task.ID}}.{{.Node.ID}}", slot: 1, want: "svc1.task1.node1"},
		{name: "replicated task name", text: "{{.Task.Name}}", slot: 3, want: "web.3.task1"},
		{name: "global slot is the node", text: "{{.Task.Slot}}", slot: 0, want: "node1"},
		{name: "global task name", text: "{{.Task.Name}}", slot: 0, want: "web.node1.task1"},
		{name: "node", text: "{{.Node.Hostname}}-{{.Node.Platform.OS}}-{{.Node.Platform.Architecture}}", slot: 1,
			node: templateNode, want: "host-a-linux-arm64"},
		{name: "no node description", text: "x{{.Node.Hostname}}{{.Node.Platform.OS}}", slot: 1, want: "x"},
		{name: "label", text: "{{.Service.Labels.tier}}-{{.Task.Slot}}", slot: 2, want: "front-2"},
		{name: "index of a missing label", text: `a{{index .Service.Labels "zone"}}`, slot: 1, want: "a"},
		{name: "missing label", text: "{{.Service.Labels.zone}}", slot: 1, wantErr: `map has no entry for key "zone"`},
		{name: "unknown field", text: "{{.Foo}}", slot: 1, wantErr: "can't evaluate field Foo"},
		{name: "unknown nested field", text: "{{.Task.Number}}", slot: 1, wantErr: "can't evaluate field Number"},
		{name: "does not parse", text: "{{.Service.Name", slot: 1, wantErr: "unclosed action"},
		{name: "unknown function", text: "{{upper .Service.Name}}", slot: 1, wantErr: `function "upper" not defined`},
		{name: "too long", text: `{{range 600}}xx{{end}}`, slot: 1,
			wantErr: "expands to more than 1024 bytes"},
		{name: "recursion", text: `{{define "a"}}x{{template "a"}}{{end}}{{template "a"}}`, slot: 1, wantErr: "1024"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := expandTemplate(tc.text, newTemplateContext(templateTask(tc.slot), tc.node))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// FuzzExpandTemplate checks that no template text panics the expansion or
// escapes its bound, and that text without actions comes back unchanged
// (the bound is for expansions).
func FuzzExpandTemplate(f *testing.F) {
	for _, s := range []string{"", "web", "{{.Task.Name}}", "{{.Service.Labels.tier}}", "{{.Foo}}", "{{",
		`{{define "a"}}x{{template "a"}}{{end}}{{template "a"}}`, "{{range 3}}{{.}}{{end}}"} {
		f.Add(s)
	}
	c := newTemplateContext(templateTask(2), templateNode)
	f.Fuzz(func(t *testing.T, text string) {
		got, err := expandTemplate(text, c)
		if err != nil {
			return
		}
		if !strings.Contains(text, "{{") {
			if got != text {
				t.Fatalf("%q without actions expanded to %q", text, got)
			}
			return
		}
		if len(got) > maxTemplateOutput {
			t.Fatalf("%q expanded to %d bytes", text, len(got))
		}
	})
}
