package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestRealTimer(t *testing.T) {
	c := Real()
	start := c.Now()
	tm := c.NewTimer(time.Millisecond)
	fired := <-tm.C()
	assert.False(t, fired.Before(start))
	tm.Reset(time.Hour)
	assert.True(t, tm.Stop(), "a reset timer that has not fired stops")
}
