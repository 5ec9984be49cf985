package runc

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
)

func TestImageHealthcheck(t *testing.T) {
	hc := &image.Healthcheck{Test: []string{"CMD-SHELL", "curl -f localhost"}, Interval: time.Second, Timeout: 2 * time.Second,
		StartPeriod: 3 * time.Second, StartInterval: 4 * time.Second, Retries: 5}
	c := &Controller{}
	assert.Nil(t, c.ImageHealthcheck(), "nothing before Prepare")
	c.prepared, c.prep.Image.Healthcheck = true, hc
	got := c.ImageHealthcheck()
	assert.Equal(t, &runtime.HealthConfig{Test: []string{"CMD-SHELL", "curl -f localhost"}, Interval: time.Second,
		Timeout: 2 * time.Second, StartPeriod: 3 * time.Second, StartInterval: 4 * time.Second, Retries: 5}, got)
	got.Test[0] = "changed"
	assert.Equal(t, "CMD-SHELL", hc.Test[0], "the result is a copy")
	c.prep.Image.Healthcheck = nil
	assert.Nil(t, c.ImageHealthcheck(), "an image without a HEALTHCHECK")
}
