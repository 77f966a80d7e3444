package servicebus

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
)

// emulatorAdminPort is where the Service Bus emulator serves the
// management API (plain HTTP).
const emulatorAdminPort = "5300"

// connectionString is what Open needs to know of a connection string:
// the endpoint host, whether it names the emulator, and the secret values
// to scrub from any error.
type connectionString struct {
	host     string
	emulator bool
	secrets  []string
}

// parseConnectionString checks a connection string before the SDK sees
// it, so that every error names the problem without echoing a secret.
// Errors name keys, never values (except Endpoint, which is not secret).
func parseConnectionString(s string) (connectionString, error) {
	var (
		cs                          connectionString
		endpoint                    string
		keyName, key, sig, emulator string
		hasKeyName, hasKey, hasSig  bool
	)
	for i, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return cs, fmt.Errorf("servicebus: malformed connection string: part %d is not key=value", i+1)
		}
		switch {
		case strings.EqualFold(k, "Endpoint"):
			endpoint = v
		case strings.EqualFold(k, "SharedAccessKeyName"):
			keyName, hasKeyName = v, true
		case strings.EqualFold(k, "SharedAccessKey"):
			key, hasKey = v, true
			cs.secrets = append(cs.secrets, v)
		case strings.EqualFold(k, "SharedAccessSignature"):
			sig, hasSig = v, true
			cs.secrets = append(cs.secrets, v)
		case strings.EqualFold(k, "UseDevelopmentEmulator"):
			emulator = v
		}
	}
	if endpoint == "" {
		return cs, errors.New("servicebus: malformed connection string: Endpoint is missing")
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "sb" || u.Host == "" {
		return cs, fmt.Errorf("servicebus: malformed connection string: Endpoint %q is not sb://<namespace host>", endpoint)
	}
	cs.host = u.Hostname()
	if emulator != "" {
		on, err := strconv.ParseBool(emulator)
		if err != nil {
			return cs, errors.New("servicebus: malformed connection string: UseDevelopmentEmulator is not true or false")
		}
		cs.emulator = on
	}
	switch {
	case hasSig && sig != "":
	case hasKeyName && keyName != "" && hasKey && key != "":
	default:
		return cs, errors.New("servicebus: malformed connection string: it needs SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature")
	}
	return cs, nil
}

// emulatorAdminEndpoint is the default management endpoint of an emulator
// connection string, or "" for a real namespace.
func (cs connectionString) emulatorAdminEndpoint() string {
	if !cs.emulator {
		return ""
	}
	return "http://" + net.JoinHostPort(cs.host, emulatorAdminPort)
}

// redact returns err with every secret value of the connection string
// replaced. The result does not wrap err, so no caller can reach the
// original text through errors.Unwrap.
func (cs connectionString) redact(err error) error {
	msg := err.Error()
	for _, s := range cs.secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "<redacted>")
		}
	}
	return errors.New(msg)
}

// adminOptions returns management client options that send every request
// to endpoint (or fallback when endpoint is empty); nil when both are
// empty.
func adminOptions(endpoint, fallback string) (*admin.ClientOptions, error) {
	if endpoint == "" {
		endpoint = fallback
	}
	if endpoint == "" {
		return nil, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("servicebus: AdminEndpoint %q is not http(s)://host[:port]", endpoint)
	}
	return &admin.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: endpointTransport{scheme: u.Scheme, host: u.Host, next: &http.Client{}},
	}}, nil
}

// endpointTransport sends management requests to another scheme and host
// than the namespace's (the emulator's management port).
type endpointTransport struct {
	scheme, host string
	next         *http.Client
}

// Do rewrites the request's URL and sends it.
func (t endpointTransport) Do(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.URL.Scheme = t.scheme
	r.URL.Host = t.host
	r.Host = t.host
	return t.next.Do(r)
}
