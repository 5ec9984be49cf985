package scheduler

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParsePreferenceValid(t *testing.T) {
	tests := []struct {
		in   string
		want Preference
	}{
		{"spread=node.labels.zone", Preference{"zone"}},
		{"spread=NODE.Labels.Zone", Preference{"Zone"}}, // the prefix in any case, the key keeps its case
		{"spread=node.labels.com.example.rack", Preference{"com.example.rack"}},
		{"spread=node.labels.node.labels.x", Preference{"node.labels.x"}},
		{"spread=node.labels.zone-ü", Preference{"zone-ü"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePreference(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.NoError(t, got.Validate())
			back, err := ParsePreference(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, back)
		})
	}
}

func TestParsePreferenceInvalid(t *testing.T) {
	const want = "(want spread=node.labels.<key>)"
	tests := []struct {
		in, err string
	}{
		{"", `preference "": must not be empty ` + want},
		{"spread", `preference "spread": must be <strategy>=<descriptor> ` + want},
		{"node.labels.zone", `preference "node.labels.zone": must be <strategy>=<descriptor> ` + want},
		{"=node.labels.zone", `preference "=node.labels.zone": strategy "" is not supported ` + want},
		{"Spread=node.labels.zone", `preference "Spread=node.labels.zone": strategy "Spread" is not supported ` + want},
		{"binpack=node.labels.zone", `preference "binpack=node.labels.zone": strategy "binpack" is not supported ` + want},
		{" spread=node.labels.zone", `preference " spread=node.labels.zone": strategy " spread" is not supported ` + want},
		{"spread=", `preference "spread=": descriptor "" must be node.labels.<key>`},
		{"spread=node.id", `preference "spread=node.id": descriptor "node.id" must be node.labels.<key>`},
		{"spread=engine.labels.zone", `preference "spread=engine.labels.zone": descriptor "engine.labels.zone" must be node.labels.<key>`},
		{"spread=node.labels", `preference "spread=node.labels": descriptor "node.labels" must be node.labels.<key>`},
		{"spread= node.labels.zone", `preference "spread= node.labels.zone": descriptor " node.labels.zone" must be node.labels.<key>`},
		{"spread=node.labels.", `preference "spread=node.labels.": label key is empty ` + want},
		{"spread=node.labels.zone ", `preference "spread=node.labels.zone ": label key "zone " must not contain white space`},
		{"spread=node.labels.my zone", `preference "spread=node.labels.my zone": label key "my zone" must not contain white space`},
		{"spread=node.labels.a=b", `preference "spread=node.labels.a=b": label key "a=b" must not contain '=' or '!'`},
		{"spread=node.labels.a!b", `preference "spread=node.labels.a!b": label key "a!b" must not contain '=' or '!'`},
		{"spread=node.labels.zone==a", `preference "spread=node.labels.zone==a": label key "zone==a" must not contain '=' or '!'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParsePreference(tt.in)
			require.Error(t, err)
			assert.EqualError(t, err, tt.err)
			assert.ErrorIs(t, err, ErrInvalidPreference)
			assert.NotErrorIs(t, err, ErrInvalidConstraint)
			var pe *PreferenceError
			require.True(t, errors.As(err, &pe))
			assert.Equal(t, tt.in, pe.Preference)
		})
	}
}

func TestParsePreferences(t *testing.T) {
	ps, err := ParsePreferences([]string{"spread=node.labels.zone", "spread=node.labels.rack"})
	require.NoError(t, err)
	assert.Equal(t, []Preference{{"zone"}, {"rack"}}, ps, "order is kept")

	ps, err = ParsePreferences(nil)
	require.NoError(t, err)
	assert.Empty(t, ps)

	ps, err = ParsePreferences([]string{"spread=node.labels.zone", "spread=node.id", "pack=node.labels.x"})
	assert.Nil(t, ps)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidPreference)
	assert.Contains(t, err.Error(), `preference "spread=node.id": descriptor "node.id" must be node.labels.<key>`)
	assert.Contains(t, err.Error(), `preference "pack=node.labels.x": strategy "pack" is not supported`)
}

func TestPreferenceValidate(t *testing.T) {
	tests := []struct {
		p   Preference
		err string
	}{
		{Preference{"zone"}, ""},
		{Preference{""}, `preference "spread=node.labels.": label key is empty (want spread=node.labels.<key>)`},
		{Preference{"a b"}, `preference "spread=node.labels.a b": label key "a b" must not contain white space`},
		{Preference{"a\tb"}, `preference "spread=node.labels.a\tb": label key "a\tb" must not contain white space`},
		{Preference{"a!"}, `preference "spread=node.labels.a!": label key "a!" must not contain '=' or '!'`},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if tt.err == "" {
			assert.NoError(t, err, tt.p.SpreadLabel)
			continue
		}
		assert.EqualError(t, err, tt.err)
		assert.ErrorIs(t, err, ErrInvalidPreference)
	}
}

func TestPreferenceString(t *testing.T) {
	assert.Equal(t, "spread=node.labels.zone", Preference{SpreadLabel: "zone"}.String())
}

func FuzzParsePreference(f *testing.F) {
	for _, s := range []string{
		"spread=node.labels.zone", "spread=NODE.LABELS.Zone", "spread=node.labels.", "spread=node.id",
		"spread", "", "=", "spread=", "binpack=node.labels.zone", "spread=node.labels.a b", "spread=node.labels.a=b",
		"spread=node.labels.\u212a", "spread=node.labels.\u00a0", "spread=node.label\u017f.x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePreference(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidPreference) {
				t.Fatalf("error %v does not match ErrInvalidPreference", err)
			}
			var pe *PreferenceError
			if !errors.As(err, &pe) || pe.Preference != s {
				t.Fatalf("error %v does not name the preference %q", err, s)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed %q to %#v which does not validate: %v", s, p, err)
		}
		if p.SpreadLabel == "" {
			t.Fatalf("parsed %q to an empty label key", s)
		}
		back, err := ParsePreference(p.String())
		if err != nil {
			t.Fatalf("String() %q of %#v does not parse: %v", p.String(), p, err)
		}
		if back != p {
			t.Fatalf("round trip of %q: %#v became %#v", s, p, back)
		}
		// The key is what follows the prefix, unchanged.
		if got := s[len(s)-len(p.SpreadLabel):]; got != p.SpreadLabel {
			t.Fatalf("parsed %q to key %q, not its tail", s, p.SpreadLabel)
		}
	})
}
