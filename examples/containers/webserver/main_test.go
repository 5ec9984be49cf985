package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHandler(t *testing.T) {
	for _, path := range []string{"/", "/anything"} {
		rec := httptest.NewRecorder()
		handler("web-1").ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, "hello from web-1 (version dev)\n", rec.Body.String(), "the version of a build without -ldflags")
	}
}
