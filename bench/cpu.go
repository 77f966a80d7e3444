package bench

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/prometheus/procfs"
)

// CPU is the processor time one timed phase used on this machine, in
// seconds, split by who used it: the benchmark's own processes (this one,
// with the jobs, River's workers or the ceiling's client and the mock CIS,
// and the item consumer processes it starts for --scaling), every
// PostgreSQL server process and every NATS server process. When a phase
// keeps every core busy, its throughput is its CPU per item, so these
// figures say where a run's time went.
//
// It is read from /proc (Linux), so it is nil where that cannot be read;
// PostgreSQL or NATS on another host shows as 0 here. An in-process NATS
// server (the embedded backend) is part of ProcessS.
type CPU struct {
	ProcessS  float64 `json:"process_s"`
	PostgresS float64 `json:"postgres_s"`
	NATSS     float64 `json:"nats_s"`
	TotalS    float64 `json:"total_s"`
	// Busy is TotalS over the phase's elapsed time on every core: near 1,
	// the phase was bound by the machine's CPU.
	Busy float64 `json:"busy"`
}

// cpuTimes is one reading of the cumulative CPU seconds of each part.
type cpuTimes struct {
	process, postgres, nats float64
}

// Process names as /proc/<pid>/stat gives them.
const (
	postgresComm = "postgres"
	natsComm     = "nats-server"
)

// readCPU reads the cumulative CPU time of this process and its children
// (running or reaped), of the PostgreSQL servers and of the NATS servers. A PostgreSQL backend that
// exits is reaped by its postmaster, whose children's time then holds
// what it used, so the sum over the live processes plus each
// postmaster's children's time only grows: the difference of two
// readings is what the phase between them used, connections opened and
// closed in it included.
func readCPU() (cpuTimes, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return cpuTimes{}, err
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return cpuTimes{}, err
	}
	var stats []procfs.ProcStat
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // gone between the listing and the read
		}
		stats = append(stats, st)
	}
	t := sumCPU(stats)
	self, found := os.Getpid(), false
	for _, st := range stats {
		switch {
		case st.PID == self:
			t.process += st.CPUTime() + childrenCPUTime(st)
			found = true
		case st.PPID == self:
			t.process += st.CPUTime()
		}
	}
	if !found {
		return cpuTimes{}, fmt.Errorf("read CPU time: this process (%d) is not in /proc", self)
	}
	return t, nil
}

// sumCPU adds up the PostgreSQL and NATS servers' CPU time in stats, and
// for each postmaster (a postgres process whose parent is not one) its
// reaped children's time.
func sumCPU(stats []procfs.ProcStat) cpuTimes {
	comm := make(map[int]string, len(stats))
	for _, s := range stats {
		comm[s.PID] = s.Comm
	}
	var t cpuTimes
	for _, s := range stats {
		switch s.Comm {
		case postgresComm:
			t.postgres += s.CPUTime()
			if comm[s.PPID] != postgresComm {
				t.postgres += childrenCPUTime(s)
			}
		case natsComm:
			t.nats += s.CPUTime() + childrenCPUTime(s)
		}
	}
	return t
}

// childrenCPUTime is what a process's reaped children used, in seconds
// (procfs's CPUTime covers the process itself only).
func childrenCPUTime(s procfs.ProcStat) float64 {
	const userHZ = 100 // the unit of /proc/<pid>/stat's times on Linux
	return float64(s.CUTime+s.CSTime) / userHZ
}

// cpuMeter measures one phase: start it where the phase's clock starts,
// stop it where the clock stops.
type cpuMeter struct {
	start cpuTimes
	ok    bool
}

func startCPU() cpuMeter {
	t, err := readCPU()
	return cpuMeter{start: t, ok: err == nil}
}

// stop returns what the phase used since start, or nil if either
// reading failed.
func (m cpuMeter) stop(elapsed time.Duration) *CPU {
	end, err := readCPU()
	if !m.ok || err != nil {
		return nil
	}
	return cpuBetween(m.start, end, elapsed, runtime.NumCPU())
}

func cpuBetween(start, end cpuTimes, elapsed time.Duration, cores int) *CPU {
	c := &CPU{
		ProcessS:  end.process - start.process,
		PostgresS: end.postgres - start.postgres,
		NATSS:     end.nats - start.nats,
	}
	c.TotalS = c.ProcessS + c.PostgresS + c.NATSS
	if capacity := elapsed.Seconds() * float64(cores); capacity > 0 {
		c.Busy = c.TotalS / capacity
	}
	return c
}
