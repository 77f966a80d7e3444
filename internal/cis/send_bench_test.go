package cis_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis"
)

// benchServer answers every request 200 with a small JSON body, as the
// mock CIS does with no faults.
func benchServer(b *testing.B) *httptest.Server {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"accepted"}`))
	}))
	b.Cleanup(srv.Close)
	return srv
}

var benchBody = bytes.Repeat([]byte("x"), 200)

// BenchmarkSend is one item delivery through the client (limits, breaker,
// retry policy, headers) from 256 concurrent callers, as the item
// consumers make them; BenchmarkSendRawHTTP is the same POST made with
// net/http alone, the floor the client's own work adds to.
func BenchmarkSend(b *testing.B) {
	srv := benchServer(b)
	c, err := cis.New(cis.Config{HTTPClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}, DefaultMaxConcurrent: 256})
	if err != nil {
		b.Fatal(err)
	}
	ep := catalog.CISEndpoint{BaseURL: srv.URL}
	header := http.Header{}
	header.Set("X-Biller-Id", "b0001")
	b.SetParallelism(128)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Send(context.Background(), cis.Request{
				BillerID: "b0001", Endpoint: ep, Path: "/payments", IdempotencyKey: "shard1:payment:1", Body: benchBody, Header: header,
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkSendRawHTTP(b *testing.B) {
	srv := benchServer(b)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	b.SetParallelism(128)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", bytes.NewReader(benchBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "shard1:payment:1")
			req.Header.Set("X-Biller-Id", "b0001")
			resp, err := hc.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	})
}
