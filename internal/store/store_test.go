package store

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBindEnrichQuery(t *testing.T) {
	t.Parallel()
	q := "SELECT a::text FROM t WHERE id = :id AND x = ':idle'"
	require.Equal(t, "SELECT a::text FROM t WHERE id = $1 AND x = ':idle'", BindEnrichQuery(q, "$1"))
	require.Equal(t, "SELECT a::text FROM t WHERE id = ? AND x = ':idle'", BindEnrichQuery(q, "?"))
}

func TestValidIdentifier(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"payments", "dbo.Payments", "_x1"} {
		require.True(t, ValidIdentifier(ok), ok)
	}
	for _, bad := range []string{"", "a.b.c", "1abc", "pay ments", "x;drop", `"q"`, "a."} {
		require.False(t, ValidIdentifier(bad), bad)
	}
}
