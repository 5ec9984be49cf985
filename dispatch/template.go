package dispatch

import (
	"fmt"
	"strconv"
	"strings"
	"text/template"

	"github.com/shoalhq/shoal/internal/api"
)

// maxTemplateOutput bounds what one template may expand to. Hostnames are
// at most 64 bytes; the bound only stops a template that recurses or ranges
// its way to megabytes before the hostname rule can refuse it.
const maxTemplateOutput = 1024

// templateContext is what a task spec's templates see, with the names of
// docker's service templates: {{.Service.Name}}, {{.Task.Slot}},
// {{.Node.Platform.OS}}, ...
type templateContext struct {
	Service struct {
		ID, Name string
		Labels   map[string]string
	}
	Task struct {
		ID string
		// Name is "<service>.<slot>.<task ID>".
		Name string
		// Slot is the replica number, or for a global service's task (slot
		// 0) the node's ID, as docker has it.
		Slot string
	}
	Node struct {
		ID, Hostname string
		Platform     struct{ OS, Architecture string }
	}
}

// newTemplateContext describes task t on the node described by node (nil
// leaves the node's hostname and platform empty).
func newTemplateContext(t *api.Task, node *api.NodeDescription) templateContext {
	var c templateContext
	c.Service.ID = t.GetServiceId()
	c.Service.Name = t.GetServiceName()
	c.Service.Labels = t.GetServiceLabels()
	c.Task.ID = t.GetId()
	c.Task.Slot = t.GetNodeId()
	if t.GetSlot() > 0 {
		c.Task.Slot = strconv.FormatUint(t.GetSlot(), 10)
	}
	c.Task.Name = c.Service.Name + "." + c.Task.Slot + "." + c.Task.ID
	c.Node.ID = t.GetNodeId()
	c.Node.Hostname = node.GetHostname()
	c.Node.Platform.OS = node.GetPlatform().GetOs()
	c.Node.Platform.Architecture = node.GetPlatform().GetArch()
	return c
}

// expandTemplate executes text, a Go text/template, against c. A field the
// context does not have ({{.Foo}}) is an error, and so is a label the
// service does not have ({{.Service.Labels.x}}; {{index .Service.Labels
// "x"}} yields "" instead), and an expansion longer than maxTemplateOutput.
// Text without "{{" is returned as it is.
func expandTemplate(text string, c templateContext) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	tmpl, err := template.New("").Option("missingkey=error").Parse(text)
	if err != nil {
		return "", err
	}
	var out boundedBuilder
	if err := tmpl.Execute(&out, c); err != nil {
		return "", err
	}
	return out.String(), nil
}

var errTemplateTooLong = fmt.Errorf("expands to more than %d bytes", maxTemplateOutput)

// boundedBuilder is a strings.Builder that refuses to grow past
// maxTemplateOutput.
type boundedBuilder struct{ strings.Builder }

func (b *boundedBuilder) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxTemplateOutput {
		return 0, errTemplateTooLong
	}
	return b.Builder.Write(p)
}
