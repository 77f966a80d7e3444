package mockcis_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/cis/mockcis"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// start runs a mock with a fixed clock behind an httptest server.
func start(t *testing.T, f mockcis.Faults) (*mockcis.Server, *httptest.Server) {
	t.Helper()
	m := mockcis.New(mockcis.Options{Faults: f, Clock: func() time.Time { return epoch }})
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return m, srv
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// deliver POSTs body to path with the given idempotency key and headers.
func deliver(t *testing.T, client *http.Client, base, path, key string, body string, header map[string]string) (answer, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func mustDeliver(t *testing.T, base, key string) answer {
	t.Helper()
	a, err := deliver(t, http.DefaultClient, base, "/payments", key, `{"billerId":"b1","amountCents":100}`, nil)
	require.NoError(t, err)
	return a
}

func TestAcceptRecordsAndStats(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})

	a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", "k1", `{"billerId":"from-body","amountCents":100}`,
		map[string]string{"X-Biller-Id": "b1"})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	var got map[string]any
	require.NoError(t, json.Unmarshal(a.body, &got))
	require.Equal(t, "accepted", got["status"])
	require.Equal(t, "k1", got["idempotencyKey"])
	require.Equal(t, false, got["duplicate"])

	recs := m.Requests()
	require.Len(t, recs, 1)
	require.Equal(t, mockcis.Record{
		Seq: 1, IdempotencyKey: "k1", BillerID: "b1", Path: "/payments",
		Body: []byte(`{"billerId":"from-body","amountCents":100}`), ReceivedAt: epoch, Status: 200,
	}, recs[0])
	require.Equal(t, mockcis.Stats{Requests: 1, Accepted: 1, UniqueAccepted: 1}, m.Stats())
	at, ok := m.AcceptedAt("k1")
	require.True(t, ok)
	require.Equal(t, epoch, at)
	_, ok = m.AcceptedAt("never")
	require.False(t, ok)
}

func TestBillerFromBodyWithoutHeader(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	mustDeliver(t, srv.URL, "k1")
	require.Equal(t, "b1", m.Requests()[0].BillerID)
}

func TestMissingIdempotencyKeyIs400(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	a := mustDeliver(t, srv.URL, "")
	require.Equal(t, http.StatusBadRequest, a.status)
	require.Contains(t, string(a.body), "Idempotency-Key")
	require.Equal(t, mockcis.Stats{Requests: 1, Rejected: 1}, m.Stats())
	require.Equal(t, 400, m.Requests()[0].Status)
}

func TestOnlyPostDelivers(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	resp, err := http.Get(srv.URL + "/payments")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Zero(t, m.Stats().Requests)
}

func TestDuplicatesCountOnlyRepeatedAcceptedKeys(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{FailFirst: map[string]int{"k1": 2}, RejectBillers: []string{"bad"}})

	var statuses []int
	for range 4 {
		statuses = append(statuses, mustDeliver(t, srv.URL, "k1").status)
	}
	require.Equal(t, []int{503, 503, 200, 200}, statuses)

	// Repeated rejections are not duplicates.
	for range 3 {
		a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", "k2", `{}`, map[string]string{"X-Biller-Id": "bad"})
		require.NoError(t, err)
		require.Equal(t, http.StatusUnprocessableEntity, a.status)
	}
	mustDeliver(t, srv.URL, "k3")

	require.Equal(t, mockcis.Stats{
		Requests: 8, Accepted: 3, Rejected: 3, Failed: 2, UniqueAccepted: 2, Duplicates: 1,
	}, m.Stats())
	var dup map[string]any
	a := mustDeliver(t, srv.URL, "k3")
	require.NoError(t, json.Unmarshal(a.body, &dup))
	require.Equal(t, true, dup["duplicate"])
}

func TestFaultKinds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		faults  mockcis.Faults
		header  map[string]string
		status  int
		stats   mockcis.Stats
		checkFn func(t *testing.T, a answer)
	}{
		{
			name: "5xx", faults: mockcis.Faults{Rate5xx: 1}, status: 503,
			stats: mockcis.Stats{Requests: 1, Failed: 1},
		},
		{
			name: "429", faults: mockcis.Faults{Rate429: 1}, status: 429,
			stats: mockcis.Stats{Requests: 1, Failed: 1},
			checkFn: func(t *testing.T, a answer) {
				require.Equal(t, "1", a.header.Get("Retry-After"))
			},
		},
		{
			name: "reject", faults: mockcis.Faults{RateReject: 1}, status: 422,
			stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "bad payload", faults: mockcis.Faults{RateBadPayload: 1}, status: 200,
			stats: mockcis.Stats{Requests: 1, Accepted: 1, UniqueAccepted: 1},
			checkFn: func(t *testing.T, a answer) {
				require.False(t, json.Valid(a.body), "body %q", a.body)
			},
		},
		{
			name: "timeout answers 200 after the delay", faults: mockcis.Faults{RateTimeout: 1, TimeoutDelay: 20 * time.Millisecond}, status: 200,
			stats: mockcis.Stats{Requests: 1, Accepted: 1, UniqueAccepted: 1},
		},
		{
			name: "reject biller from header", faults: mockcis.Faults{RejectBillers: []string{"b9"}}, header: map[string]string{"X-Biller-Id": "b9"},
			status: 422, stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "reject biller from body", faults: mockcis.Faults{RejectBillers: []string{"b1"}},
			status: 422, stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "api key missing", faults: mockcis.Faults{RequireAPIKey: "s3cret"},
			status: 401, stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "api key wrong", faults: mockcis.Faults{RequireAPIKey: "s3cret"}, header: map[string]string{"X-Api-Key": "nope"},
			status: 401, stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "api key right", faults: mockcis.Faults{RequireAPIKey: "s3cret"}, header: map[string]string{"X-Api-Key": "s3cret"},
			status: 200, stats: mockcis.Stats{Requests: 1, Accepted: 1, UniqueAccepted: 1},
		},
		{
			name: "bearer missing", faults: mockcis.Faults{RequireBearer: true}, header: map[string]string{"Authorization": "Bearer forged"},
			status: 401, stats: mockcis.Stats{Requests: 1, Rejected: 1},
		},
		{
			name: "fail first", faults: mockcis.Faults{FailFirst: map[string]int{"k1": 1}},
			status: 503, stats: mockcis.Stats{Requests: 1, Failed: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, srv := start(t, tc.faults)
			a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", "k1", `{"billerId":"b1"}`, tc.header)
			require.NoError(t, err)
			require.Equal(t, tc.status, a.status, "body %s", a.body)
			require.Equal(t, tc.stats, m.Stats())
			require.Equal(t, tc.status, m.Requests()[0].Status)
			if tc.checkFn != nil {
				tc.checkFn(t, a)
			}
		})
	}
}

// TestResendsAreTheDuplicatesOfALaterAttempt: a repeated accepted key
// sent as attempt 2 or later of one call is a resend (and a duplicate);
// one sent as attempt 1, or with no attempt number, is a second delivery.
func TestResendsAreTheDuplicatesOfALaterAttempt(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	send := func(key, attempt string) {
		header := map[string]string{}
		if attempt != "" {
			header[cis.AttemptHeader] = attempt
		}
		a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", key, `{"billerId":"b1"}`, header)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status)
	}
	send("k1", "1")
	send("k1", "2") // resend
	send("k1", "1") // second delivery
	send("k2", "3") // first acceptance of k2, whatever the attempt
	send("k2", "")  // second delivery
	send("k2", "x") // unreadable attempt: counted as a second delivery
	require.Equal(t, mockcis.Stats{Requests: 6, Accepted: 6, UniqueAccepted: 2, Duplicates: 4, Resends: 1}, m.Stats())
}

// TestDuplicatesSayHowLongAfterTheFirstAcceptanceTheyCame: the stats
// keep the shortest and longest time from a key's first acceptance to a
// duplicate of it, over every key.
func TestDuplicatesSayHowLongAfterTheFirstAcceptanceTheyCame(t *testing.T) {
	t.Parallel()
	var at atomic.Int64 // since epoch, set before each request
	m := mockcis.New(mockcis.Options{Clock: func() time.Time { return epoch.Add(time.Duration(at.Load())) }})
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	send := func(key string, after time.Duration) {
		at.Store(int64(after))
		a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", key, `{"billerId":"b1"}`, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status)
	}
	send("k1", 0)
	send("k2", time.Second)
	require.Zero(t, m.Stats().DuplicateAfterMinMs, "no duplicate yet")
	send("k1", 2500*time.Millisecond) // 2.5 s after k1's acceptance
	send("k2", 1200*time.Millisecond) // 0.2 s after k2's
	send("k1", 4*time.Second)         // 4 s after k1's
	st := m.Stats()
	require.Equal(t, 3, st.Duplicates)
	require.Equal(t, 200.0, st.DuplicateAfterMinMs)
	require.Equal(t, 4000.0, st.DuplicateAfterMaxMs)
}

func TestTimeoutFaultAcceptsWhenClientGivesUp(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{RateTimeout: 1, TimeoutDelay: time.Minute})
	impatient := &http.Client{Timeout: 50 * time.Millisecond}
	_, err := deliver(t, impatient, srv.URL, "/payments", "k1", `{}`, nil)
	require.Error(t, err)
	_, ok := m.AcceptedAt("k1")
	require.True(t, ok, "the hung request was accepted")

	// The client retries once the CIS is healthy: a duplicate.
	m.SetFaults(mockcis.Faults{})
	require.Equal(t, http.StatusOK, mustDeliver(t, srv.URL, "k1").status)
	require.Equal(t, mockcis.Stats{Requests: 2, Accepted: 2, UniqueAccepted: 1, Duplicates: 1}, m.Stats())
}

func TestLatencyAndJitterDelayTheAnswer(t *testing.T) {
	t.Parallel()
	for name, f := range map[string]mockcis.Faults{
		"latency": {Latency: time.Minute},
		// With this seed the first jitter draw is far above the client's
		// 50ms patience; the draw is deterministic.
		"jitter": {LatencyJitter: time.Hour, Seed: 7},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, srv := start(t, f)
			impatient := &http.Client{Timeout: 50 * time.Millisecond}
			_, err := deliver(t, impatient, srv.URL, "/payments", "k1", `{}`, nil)
			require.Error(t, err)
			require.Equal(t, 1, m.Stats().Accepted)
		})
	}
}

func TestRequireBearerAcceptsIssuedToken(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{RequireBearer: true})

	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"payments.write"}}
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/oauth/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("client", "secret")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	require.NotEmpty(t, tok.AccessToken)
	require.Equal(t, "Bearer", tok.TokenType)
	require.Positive(t, tok.ExpiresIn)

	a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", "k1", `{}`, map[string]string{"Authorization": "Bearer " + tok.AccessToken})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, 1, m.Stats().TokensIssued)
}

func TestTokenEndpointRefusesBadRequests(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	for _, tc := range []struct {
		form   url.Values
		status int
		code   string
	}{
		{url.Values{"grant_type": {"password"}, "client_id": {"c"}, "client_secret": {"s"}}, 400, "unsupported_grant_type"},
		{url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}}, 401, "invalid_client"},
		{url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}, "client_secret": {"s"}}, 200, ""},
	} {
		resp, err := http.PostForm(srv.URL+"/oauth/token", tc.form)
		require.NoError(t, err)
		var body map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		resp.Body.Close()
		require.Equal(t, tc.status, resp.StatusCode)
		if tc.code != "" {
			require.Equal(t, tc.code, body["error"])
		}
	}
	require.Equal(t, mockcis.Stats{TokensIssued: 1}, m.Stats())
}

func TestSeedMakesFaultsDeterministic(t *testing.T) {
	t.Parallel()
	run := func(seed int64) []int {
		_, srv := start(t, mockcis.Faults{Rate5xx: 0.3, Rate429: 0.2, Seed: seed})
		var out []int
		for i := range 40 {
			out = append(out, mustDeliver(t, srv.URL, fmt.Sprint("k", i)).status)
		}
		return out
	}
	a, b := run(42), run(42)
	require.Equal(t, a, b)
	require.Contains(t, a, 200)
	require.Contains(t, a, 503)
	require.Contains(t, a, 429)
	require.NotEqual(t, a, run(43))
}

func TestResetForgetsRequestsAndKeepsFaults(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{FailFirst: map[string]int{"k1": 1}})
	require.Equal(t, 503, mustDeliver(t, srv.URL, "k1").status)
	require.Equal(t, 200, mustDeliver(t, srv.URL, "k1").status)

	m.Reset()
	require.Empty(t, m.Requests())
	require.Equal(t, mockcis.Stats{}, m.Stats())
	_, ok := m.AcceptedAt("k1")
	require.False(t, ok)
	require.Equal(t, 503, mustDeliver(t, srv.URL, "k1").status, "fail-first counts restart")
	require.Equal(t, 1, m.Requests()[0].Seq)
}

func TestMaxRecordsKeepsNewest(t *testing.T) {
	t.Parallel()
	m := mockcis.New(mockcis.Options{MaxRecords: 2})
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	for i := range 5 {
		mustDeliver(t, srv.URL, fmt.Sprint("k", i))
	}
	recs := m.Requests()
	require.Len(t, recs, 2)
	require.Equal(t, []int{4, 5}, []int{recs[0].Seq, recs[1].Seq})
	require.Equal(t, 5, m.Stats().UniqueAccepted)
}

func TestConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	const workers, perWorker, keys = 8, 25, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", fmt.Sprint("k", (w*perWorker+i)%keys), `{}`, nil)
				if err == nil && a.status != http.StatusOK {
					err = fmt.Errorf("status %d", a.status)
				}
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	total := workers * perWorker
	require.Equal(t, mockcis.Stats{Requests: total, Accepted: total, UniqueAccepted: keys, Duplicates: total - keys}, m.Stats())
	recs := m.Requests()
	require.Len(t, recs, total)
	for i, r := range recs {
		require.Equal(t, i+1, r.Seq)
	}
	for k := range keys {
		_, ok := m.AcceptedAt(fmt.Sprint("k", k))
		require.True(t, ok)
	}
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})

	put := func(body string) *http.Response {
		req, err := http.NewRequest(http.MethodPut, srv.URL+"/_mock/faults", strings.NewReader(body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := put(`{"rate5xx":1,"latency":"5ms","failFirst":{"x":2},"rejectBillers":["b7"],"seed":3}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, mockcis.Faults{
		Rate5xx: 1, Latency: 5 * time.Millisecond, FailFirst: map[string]int{"x": 2}, RejectBillers: []string{"b7"}, Seed: 3,
	}, m.Faults())

	var faults mockcis.Faults
	getJSON(t, srv.URL+"/_mock/faults", &faults)
	require.Equal(t, m.Faults(), faults)

	for _, bad := range []string{`{"rate5xx":2}`, `{"rate5xx":0.6,"rate429":0.6}`, `{"latency":"soon"}`, `{"latencyy":"1s"}`, `{"latency":"-1s"}`} {
		require.Equal(t, http.StatusBadRequest, put(bad).StatusCode, bad)
	}

	require.Equal(t, 503, mustDeliver(t, srv.URL, "k1").status)
	var stats mockcis.Stats
	getJSON(t, srv.URL+"/_mock/stats", &stats)
	require.Equal(t, mockcis.Stats{Requests: 1, Failed: 1}, stats)

	var recs []map[string]any
	getJSON(t, srv.URL+"/_mock/requests", &recs)
	require.Len(t, recs, 1)
	require.Equal(t, "k1", recs[0]["idempotencyKey"])
	require.Equal(t, map[string]any{"billerId": "b1", "amountCents": float64(100)}, recs[0]["body"])
	require.EqualValues(t, 503, recs[0]["status"])

	resp, err := http.Post(srv.URL+"/_mock/reset", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Equal(t, mockcis.Stats{}, m.Stats())

	resp, err = http.Get(srv.URL + "/_mock/nothing")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

func TestFaultsJSONRoundTrip(t *testing.T) {
	t.Parallel()
	f := mockcis.Faults{
		Latency: 5 * time.Millisecond, LatencyJitter: time.Second, Rate5xx: 0.1, Rate429: 0.1, RateTimeout: 0.1,
		TimeoutDelay: 2 * time.Second, RateReject: 0.1, RateBadPayload: 0.1, FailFirst: map[string]int{"k": 1},
		RejectBillers: []string{"b"}, RequireAPIKey: "key", RequireBearer: true, Seed: 9,
	}
	b, err := json.Marshal(f)
	require.NoError(t, err)
	require.Contains(t, string(b), `"latency":"5ms"`)
	var back mockcis.Faults
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, f, back)

	require.NoError(t, json.Unmarshal([]byte(`{"latency":1000000}`), &back))
	require.Equal(t, time.Millisecond, back.Latency)
}

func TestFaultsValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, mockcis.Faults{Rate5xx: 0.5, Rate429: 0.5}.Validate())
	for field, f := range map[string]mockcis.Faults{
		"rateReject":   {RateReject: -0.1},
		"rates":        {Rate5xx: 0.7, RateTimeout: 0.7},
		"timeoutDelay": {TimeoutDelay: -time.Second},
		"failFirst":    {FailFirst: map[string]int{"k": -1}},
	} {
		err := f.Validate()
		require.Error(t, err)
		require.Contains(t, err.Error(), field)
	}
}

func TestServeShutsDownOnContext(t *testing.T) {
	t.Parallel()
	m := mockcis.New(mockcis.Options{Faults: mockcis.Faults{RateTimeout: 1, TimeoutDelay: time.Hour}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	hung := make(chan error, 1)
	go func() {
		_, err := deliver(t, http.DefaultClient, base, "/payments", "k1", `{}`, nil)
		hung <- err
	}()
	require.Eventually(t, func() bool { return m.Stats().Requests == 1 }, 5*time.Second, 5*time.Millisecond)

	cancel()
	require.NoError(t, <-done)
	require.Error(t, <-hung, "the hanging request is cut short")
	_, err = deliver(t, http.DefaultClient, base, "/payments", "k2", `{}`, nil)
	require.Error(t, err, "the server no longer listens")
}

func TestListenAndServe(t *testing.T) {
	t.Parallel()
	m := mockcis.New(mockcis.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.NoError(t, m.ListenAndServe(ctx, "127.0.0.1:0"))
	err := m.ListenAndServe(t.Context(), "256.0.0.1:bad")
	require.ErrorContains(t, err, "mock cis: listen")
}

func TestTooLargeBodyIsRejected(t *testing.T) {
	t.Parallel()
	m, srv := start(t, mockcis.Faults{})
	big := `{"pad":"` + strings.Repeat("x", 1<<20) + `"}`
	a, err := deliver(t, http.DefaultClient, srv.URL, "/payments", "k1", big, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestEntityTooLarge, a.status)
	require.Equal(t, mockcis.Stats{Requests: 1, Rejected: 1}, m.Stats())
	require.True(t, bytes.HasPrefix(m.Requests()[0].Body, []byte(`{"pad"`)))
}
