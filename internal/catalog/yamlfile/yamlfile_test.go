package yamlfile_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/catalog/catalogtest"
	"github.com/datapump/datapump/internal/catalog/yamlfile"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	catalogtest.Exercise(context.Background(), t, catalogtest.Features{ReadOnly: true},
		func(t *testing.T, seed []catalog.Biller) catalog.Catalog {
			path := filepath.Join(t.TempDir(), "billers.yaml")
			require.NoError(t, yamlfile.Write(path, seed))
			c, err := yamlfile.Load(path)
			require.NoError(t, err)
			return c
		})
}

const example = `billers:
  - id: b001
    name: Acme Water
    shard: shard1
    mode: poll            # off | poll | direct
    cutover_at: 2026-01-01T00:00:00Z
    cis:
      base_url: https://cis.acme.example
      auth: api_key       # none | api_key | oauth2
      api_key_env: ACME_CIS_KEY
      api_key_header: X-Api-Key
      timeout: 10s
      rate_per_second: 50
      max_concurrent: 8
  - id: a002
    name: Bravo Gas
    shard: shard2
    mode: off
    cis:
      base_url: https://cis.bravo.example
      auth: oauth2
      token_url: https://login.bravo.example/token
      client_id: pump
      client_secret_env: BRAVO_SECRET
      scopes: [a, b]
`

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "billers.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestLoadExample(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := yamlfile.Load(writeFile(t, example))
	require.NoError(t, err)

	list, err := c.BillerList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "a002", list[0].ID)
	require.Equal(t, []string{"a", "b"}, list[0].CIS.Scopes)
	require.Equal(t, catalog.AuthOAuth2, list[0].CIS.Auth)
	require.True(t, list[0].CutoverAt.IsZero())

	b, err := c.BillerGet(ctx, "b001")
	require.NoError(t, err)
	require.Equal(t, "Acme Water", b.Name)
	require.Equal(t, "shard1", b.Shard)
	require.Equal(t, catalog.ModePoll, b.Mode)
	require.True(t, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Equal(b.CutoverAt))
	require.Equal(t, catalog.CISEndpoint{
		BaseURL: "https://cis.acme.example", Auth: catalog.AuthAPIKey, APIKeyEnv: "ACME_CIS_KEY",
		APIKeyHeader: "X-Api-Key", Timeout: 10 * time.Second, RatePerSecond: 50, MaxConcurrent: 8,
	}, b.CIS)
	require.False(t, b.UpdatedAt.IsZero(), "updated_at is the file's modification time")
}

func TestListReturnsCopies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := yamlfile.Load(writeFile(t, example))
	require.NoError(t, err)
	list, err := c.BillerList(ctx)
	require.NoError(t, err)
	list[0].CIS.Scopes[0] = "changed"
	b, err := c.BillerGet(ctx, "a002")
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, b.CIS.Scopes)
}

func TestLoadRefusesBadFiles(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		content string
		want    []string // substrings of the error
	}{
		{"UnknownTopLevelKey", "billers: []\nshards: []\n", []string{`unknown key "shards" at top level`}},
		{"UnknownBillerKey", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    toggle: on\n", []string{`unknown key "toggle" in a biller`, "line 5"}},
		{"UnknownCISKey", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      api_key: secret\n", []string{`unknown key "api_key" in cis`}},
		{"MissingID", "billers:\n  - shard: s\n    mode: off\n", []string{"billers[0]", "id"}},
		{"MissingShard", "billers:\n  - id: b1\n    mode: off\n", []string{"b1", "shard"}},
		{"BadMode", "billers:\n  - id: b1\n    shard: s\n    mode: on\n", []string{"b1", "mode"}},
		{"DuplicateID", "billers:\n  - id: b1\n    shard: s\n    mode: off\n  - id: b1\n    shard: t\n    mode: off\n", []string{"b1", "twice"}},
		{"BadTimeout", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      timeout: soon\n", []string{"soon"}},
		{"NegativeTimeout", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      timeout: -1s\n", []string{"b1", "cis.timeout"}},
		{"BadAuth", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      auth: basic\n", []string{"b1", "cis.auth"}},
		{"APIKeyWithoutEnv", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      auth: api_key\n", []string{"b1", "cis.api_key_env"}},
		{"OAuth2WithoutClient", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      auth: oauth2\n      token_url: https://t.example\n", []string{"b1", "cis.client_id"}},
		{"PollWithoutBaseURL", "billers:\n  - id: b1\n    shard: s\n    mode: poll\n", []string{"b1", "cis.base_url"}},
		{"RelativeBaseURL", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      base_url: cis.example\n", []string{"b1", "cis.base_url"}},
		{"NegativeRate", "billers:\n  - id: b1\n    shard: s\n    mode: off\n    cis:\n      rate_per_second: -2\n", []string{"b1", "cis.rate_per_second"}},
		{"Empty", "", []string{"billers"}},
		{"TwoDocuments", "billers: []\n---\nbillers: []\n", []string{"document"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, tc.content)
			_, err := yamlfile.Load(path)
			require.Error(t, err)
			require.Contains(t, err.Error(), path, "error names the file")
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := yamlfile.Load(filepath.Join(t.TempDir(), "absent.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
