package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/bench"
)

func TestPrintPumpResultSaysWhereTheFrontEnded(t *testing.T) {
	t.Parallel()
	r := bench.PumpResult{Backend: bench.BackendPostgres, Items: 100000, Throughput: bench.Throughput{Delivered: 100000, ElapsedS: 9.5, ItemsPerS: 10526}}
	var out bytes.Buffer
	printPumpResult(&out, r)
	require.NotContains(t, out.String(), "last item Queued", "a run without the split prints none")

	r.Front = &bench.Front{AllQueuedS: 3.62, DeliveredBefore: 6046, AfterItemsPerS: 12203}
	out.Reset()
	printPumpResult(&out, r)
	require.Regexp(t, `last item Queued +after 3\.62 s, 6046 delivered by then`, out.String())
	require.Regexp(t, `item consumers alone +12203 items/s from then on`, out.String())
}
