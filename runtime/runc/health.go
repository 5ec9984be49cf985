package runc

import (
	"slices"

	"github.com/shoalhq/shoal/runtime"
)

var _ runtime.ImageHealthchecker = (*Controller)(nil)

// ImageHealthcheck returns the HEALTHCHECK of the container's image, as
// Prepare found it; see runtime.ImageHealthchecker.
func (c *Controller) ImageHealthcheck() *runtime.HealthConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.prep.Image.Healthcheck
	if !c.prepared || h == nil || len(h.Test) == 0 {
		return nil
	}
	return &runtime.HealthConfig{
		Test:          slices.Clone(h.Test),
		Interval:      h.Interval,
		Timeout:       h.Timeout,
		StartPeriod:   h.StartPeriod,
		StartInterval: h.StartInterval,
		Retries:       h.Retries,
	}
}
