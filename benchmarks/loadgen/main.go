// Command loadgen is an open-loop HTTP/1.1 load generator for benchmarks/feed_read.py.
//
// Requests are scheduled on a fixed timetable (request i at start + i/rate) whatever the server
// does, and each latency is measured from the request's scheduled time to the end of its
// response body, so a slow answer delays the requests queued behind it and that delay is counted
// (no coordinated omission). A fixed pool of keep-alive connections takes the requests in
// schedule order; a request waits for a free connection when all are busy, and that wait counts.
//
// The scheduler sleeps with nanosleep on a locked OS thread with a 1 ns timer slack: Go's
// time.Sleep wakes up ~1 ms late here, which would add up to 1 ms to every measured latency. How
// late each request still left the scheduler is reported as "lag".
//
// Input (-requests): one request per line, "path<TAB>header: value<TAB>…", sent round-robin.
// Output on stdout: "start" when the measured window opens, "end" when its last request has
// been scheduled, then one JSON object (see result).
//
// With -serve it is instead a trivial server answering every request with -body bytes: the
// generator measured against it gives the floor of the measurement (client, loopback, wake-ups).
//
// Standard library only; built by benchmarks/feed_read.py into .cache/.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

type job struct {
	index int
	at    time.Time
}

type result struct {
	Offered     float64        `json:"offered_rps"`
	Scheduled   int            `json:"scheduled"`
	OK          int            `json:"ok"`
	Errors      map[string]int `json:"errors"`
	Unfinished  int            `json:"unfinished"`
	AchievedRPS float64        `json:"achieved_rps"`
	LatencyUS   []float64      `json:"latency_us"`
	LagUS       []float64      `json:"lag_us"`
	BodyBytes   int64          `json:"body_bytes"`
}

type worker struct {
	addr     string
	requests [][]byte
	conn     net.Conn
	reader   *bufio.Reader
}

// do sends request i and reads its whole answer; the body length, or an error label.
func (w *worker) do(i int, timeout time.Duration) (int64, string) {
	if w.conn == nil {
		conn, err := net.DialTimeout("tcp", w.addr, timeout)
		if err != nil {
			return 0, "connect"
		}
		w.conn, w.reader = conn, bufio.NewReaderSize(conn, 16<<10)
	}
	w.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := w.conn.Write(w.requests[i%len(w.requests)]); err != nil {
		w.drop()
		return 0, "write"
	}
	resp, err := http.ReadResponse(w.reader, nil)
	if err != nil {
		w.drop()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return 0, "timeout"
		}
		return 0, "read"
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		w.drop()
		return 0, "read"
	}
	if resp.Close {
		w.drop()
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Sprintf("status %d", resp.StatusCode)
	}
	return n, ""
}

func (w *worker) drop() {
	w.conn.Close()
	w.conn, w.reader = nil, nil
}

// sleepUntil sleeps with nanosleep (the calling goroutine's thread must be locked).
func sleepUntil(at time.Time) {
	for {
		d := time.Until(at)
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(int64(d))
		syscall.Nanosleep(&ts, nil)
	}
}

func readRequests(path, addr string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.Split(line, "\t")
		var b strings.Builder
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", parts[0], addr)
		for _, h := range parts[1:] {
			b.WriteString(h + "\r\n")
		}
		b.WriteString("\r\n")
		out = append(out, []byte(b.String()))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no requests", path)
	}
	return out, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "server host:port")
	rate := flag.Float64("rate", 1000, "requests per second offered")
	duration := flag.Duration("duration", 10*time.Second, "measured window")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the window, not measured")
	conns := flag.Int("conns", 64, "keep-alive connections")
	timeout := flag.Duration("timeout", 10*time.Second, "per request (connect, send, answer)")
	drain := flag.Duration("drain", 30*time.Second, "wait for answers after the last request")
	requestsPath := flag.String("requests", "", "file of requests (see the package comment)")
	serve := flag.String("serve", "", "instead, serve -body bytes per request on this address")
	bodySize := flag.Int("body", 1600, "bytes each answer of -serve carries")
	flag.Parse()
	if *serve != "" {
		body := []byte(strings.Repeat("x", *bodySize))
		fmt.Fprintln(os.Stderr, http.ListenAndServe(*serve, http.HandlerFunc(
			func(w http.ResponseWriter, _ *http.Request) { w.Write(body) })))
		os.Exit(1)
	}
	requests, err := readRequests(*requestsPath, *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// The scheduler's thread sits in nanosleep; keep a second P for the connections even when
	// the process is pinned to one CPU (GOMAXPROCS follows the affinity mask).
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	interval := float64(time.Second) / *rate
	first := int(float64(*warmup) / interval)
	total := first + int(float64(*duration)/interval)
	jobs := make(chan job, total)
	latency := make([]float64, total) // µs; -1: not answered (yet)
	lag := make([]float64, total)
	for i := range latency {
		latency[i] = -1
	}
	var mu sync.Mutex
	errs := map[string]int{}
	var bodyBytes int64
	var wg sync.WaitGroup
	for c := 0; c < *conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{addr: *addr, requests: requests}
			for j := range jobs {
				n, failure := w.do(j.index, *timeout)
				took := float64(time.Since(j.at)) / 1e3
				mu.Lock()
				if failure != "" {
					if j.index >= first {
						errs[failure]++
					}
				} else {
					latency[j.index] = took
					bodyBytes += n
				}
				mu.Unlock()
			}
			if w.conn != nil {
				w.conn.Close()
			}
		}()
	}
	out := bufio.NewWriter(os.Stdout)
	say := func(s string) { out.WriteString(s + "\n"); out.Flush() }
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		syscall.RawSyscall(syscall.SYS_PRCTL, 29, 1, 0) // PR_SET_TIMERSLACK: 1 ns
		start := time.Now().Add(50 * time.Millisecond)
		for i := 0; i < total; i++ {
			at := start.Add(time.Duration(float64(i) * interval))
			sleepUntil(at)
			if i == first {
				say("start")
			}
			lag[i] = float64(time.Since(at)) / 1e3
			jobs <- job{i, at}
		}
		say("end")
		close(jobs)
		close(done)
	}()
	<-done
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(*drain):
	}
	mu.Lock()
	defer mu.Unlock()
	res := result{Offered: *rate, Scheduled: total - first, Errors: errs}
	res.LatencyUS = make([]float64, 0, total-first)
	res.LagUS = lag[first:]
	var lastDone float64 // µs after the window's first scheduled time
	openedAt := float64(first) * interval / 1e3
	for i := first; i < total; i++ {
		if latency[i] < 0 {
			continue
		}
		res.OK++
		res.LatencyUS = append(res.LatencyUS, latency[i])
		if d := float64(i)*interval/1e3 + latency[i] - openedAt; d > lastDone {
			lastDone = d
		}
	}
	failed := 0
	for _, n := range errs {
		failed += n
	}
	res.Unfinished = res.Scheduled - res.OK - failed
	if lastDone > 0 {
		res.AchievedRPS = float64(res.OK) / (lastDone / 1e6)
	}
	res.BodyBytes = bodyBytes
	enc := json.NewEncoder(out)
	enc.Encode(res)
	out.Flush()
}
