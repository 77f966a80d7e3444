package sqlserver

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/microsoft/go-mssqldb/azuread"
	"github.com/microsoft/go-mssqldb/msdsn"
)

// DriverSQLAuth is the go-mssqldb driver used for SQL authentication; a
// DSN with fedauth uses azuread.DriverName.
const DriverSQLAuth = "sqlserver"

// fedAuthMethods maps the lower-cased fedauth values of the azuread driver
// to their spelling. The driver matches them case-insensitively when it
// parses a DSN but exactly when it picks a credential, so a value spelled
// differently would silently fall back to DefaultAzureCredential.
var fedAuthMethods = func() map[string]string {
	out := map[string]string{}
	for _, m := range []string{
		azuread.ActiveDirectoryWorkloadIdentity, azuread.ActiveDirectoryDefault,
		azuread.ActiveDirectoryManagedIdentity, azuread.ActiveDirectoryMSI,
		azuread.ActiveDirectoryServicePrincipal, azuread.ActiveDirectoryApplication,
		azuread.ActiveDirectoryServicePrincipalAccessToken, azuread.ActiveDirectoryEnvironment,
		azuread.ActiveDirectoryAzCli, azuread.ActiveDirectoryAzureDeveloperCli,
		azuread.ActiveDirectoryAzurePipelines, azuread.ActiveDirectoryClientAssertion,
		azuread.ActiveDirectoryOnBehalfOf, azuread.ActiveDirectoryPassword,
		azuread.ActiveDirectoryIntegrated, azuread.ActiveDirectoryInteractive,
		azuread.ActiveDirectoryDeviceCode,
	} {
		out[strings.ToLower(m)] = m
	}
	return out
}()

// newConnector parses dsn and returns the connector of the driver it
// needs: go-mssqldb's own for SQL authentication, the azuread driver's
// (azuread.DriverName) when the DSN names a fedauth method. A malformed DSN
// fails here, before any connection is made.
func newConnector(dsn string) (string, *mssql.Connector, error) {
	// The driver reads anything that is not sqlserver:// or odbc: as an
	// ADO string, so another scheme would be taken for a server name.
	if m := otherScheme.FindStringSubmatch(dsn); m != nil && m[1] != "sqlserver" {
		return "", nil, fmt.Errorf("parse dsn: scheme %q is not sqlserver", m[1])
	}
	cfg, err := msdsn.Parse(dsn)
	if err != nil {
		return "", nil, fmt.Errorf("parse dsn: %w", err)
	}
	fedauth := cfg.Parameters["fedauth"]
	if fedauth == "" {
		c, err := mssql.NewConnector(dsn)
		if err != nil {
			return "", nil, fmt.Errorf("parse dsn: %w", err)
		}
		return DriverSQLAuth, c, nil
	}
	method, ok := fedAuthMethods[strings.ToLower(fedauth)]
	if !ok {
		return "", nil, fmt.Errorf("parse dsn: fedauth: %q is not an Entra ID method of the azuread driver (for example %s or %s)",
			fedauth, azuread.ActiveDirectoryWorkloadIdentity, azuread.ActiveDirectoryDefault)
	}
	if method != fedauth {
		return "", nil, fmt.Errorf("parse dsn: fedauth: write %q as %s", fedauth, method)
	}
	c, err := azuread.NewConnector(dsn)
	if err != nil {
		return "", nil, fmt.Errorf("parse dsn: fedauth %s: %w", method, err)
	}
	return azuread.DriverName, c, nil
}

// redactedError hides the DSN's secrets from the message while keeping the
// cause for errors.Is.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// otherScheme matches a URL scheme at the start of a DSN.
var otherScheme = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

var (
	// urlSecret is the password of a sqlserver://user:password@host URL.
	urlSecret = regexp.MustCompile(`://[^:/@\s]*:([^@\s]*)@`)
	// kvSecret is a secret of an ADO or ODBC DSN: a quoted, braced or plain value.
	kvSecret = regexp.MustCompile(`(?i)(?:^|[;?&\s])(?:password|pwd|change password|clientassertion|userassertion|systemtoken)\s*=\s*("(?:[^"]|"")*"|\{(?:[^}]|\}\})*\}|[^;&]*)`)
)

// newRedactor returns a function that removes every secret found in dsn
// (passwords, client secrets and assertions) from an error's message. The
// driver avoids printing the DSN; this is the belt to its braces.
func newRedactor(dsn string) func(error) error {
	var secrets []string
	addSecret := func(s string) {
		if s == "" {
			return
		}
		secrets = append(secrets, s)
		if u, err := url.QueryUnescape(s); err == nil && u != s {
			secrets = append(secrets, u)
		}
		secrets = append(secrets, url.QueryEscape(s), url.PathEscape(s))
	}
	if cfg, err := msdsn.Parse(dsn); err == nil {
		addSecret(cfg.Password)
		addSecret(cfg.ChangePassword)
		for _, k := range []string{"clientassertion", "userassertion", "systemtoken"} {
			addSecret(cfg.Parameters[k])
		}
	}
	for _, m := range urlSecret.FindAllStringSubmatch(dsn, -1) {
		addSecret(m[1])
	}
	for _, m := range kvSecret.FindAllStringSubmatch(dsn, -1) {
		v := strings.TrimSpace(m[1])
		addSecret(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '{') {
			addSecret(v[1 : len(v)-1])
		}
	}
	// Longest first, so a secret containing another is removed whole.
	for i := 1; i < len(secrets); i++ {
		for j := i; j > 0 && len(secrets[j]) > len(secrets[j-1]); j-- {
			secrets[j], secrets[j-1] = secrets[j-1], secrets[j]
		}
	}
	return func(err error) error {
		msg := err.Error()
		for _, sec := range secrets {
			if sec != "" {
				msg = strings.ReplaceAll(msg, sec, "xxxxx")
			}
		}
		return &redactedError{msg: msg, err: err}
	}
}
