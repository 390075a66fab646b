// Command linearize checks a history of register operations (read / write / compare-and-set on
// keys) for linearizability with porcupine, one key-value register per key.
//
// Input (a file or stdin): {"ops": [{"client": 0, "op": "read"|"write"|"cas", "key": "k1",
// "value": 3 (write: the value written; cas: the new value; read: what was read, null = absent),
// "expect": 2 (cas only), "swapped": true (an acknowledged cas: whether it replaced the value),
// "call": ns, "return": ns, "outcome": "ok"|"fail"|"unknown"}]}.
//
// Outcomes: a failed operation certainly did not happen and is dropped; an unknown read tells
// nothing and is dropped; an unknown write or cas may have happened at any time after its call,
// so it stays pending forever (return = +infinity) and porcupine may place it anywhere later, or
// (as it then changes nothing observed) effectively never.
//
// Output: one JSON object on stdout: {"ok", "result": "ok"|"illegal"|"unknown" (timed out),
// "keys": {key: {"result", "ops", "pending", "seconds"}}, "ops_checked", "ops_dropped",
// "visualizations"}. Exit 0 when linearizable, 1 when illegal or unknown, 2 on bad input.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

type inOp struct {
	Client  *int    `json:"client"`
	Op      string  `json:"op"`
	Key     *string `json:"key"`
	Value   *int64  `json:"value"`
	Expect  *int64  `json:"expect"`
	Swapped *bool   `json:"swapped"`
	Call    *int64  `json:"call"`
	Return  *int64  `json:"return"`
	Outcome string  `json:"outcome"`
	Label   string  `json:"label"`
}

type input struct {
	Ops []inOp `json:"ops"`
}

// state of one register: Set is false until the first write.
type state struct {
	Set bool
	V   int64
}

type opInput struct {
	Kind   string // read | write | cas
	Value  int64  // write: written; cas: new value
	Expect int64  // cas
}

type opOutput struct {
	Known   bool  // false: an unknown write / cas (may or may not have taken effect)
	Read    state // read: what was read
	Swapped bool  // cas
}

type keyResult struct {
	Result  string  `json:"result"`
	Ops     int     `json:"ops"`
	Pending int     `json:"pending"`
	Seconds float64 `json:"seconds"`
}

type output struct {
	OK             bool                 `json:"ok"`
	Result         string               `json:"result"`
	Keys           map[string]keyResult `json:"keys"`
	OpsChecked     int                  `json:"ops_checked"`
	OpsDropped     int                  `json:"ops_dropped"`
	Visualizations []string             `json:"visualizations"`
}

func step(s, in, out interface{}) (bool, interface{}) {
	st := s.(state)
	i := in.(opInput)
	o := out.(opOutput)
	switch i.Kind {
	case "write":
		return true, state{true, i.Value}
	case "read":
		return o.Read == st, st
	case "cas":
		matches := st.Set && st.V == i.Expect
		if !o.Known { // it took effect here if it could; not taking effect is the same as never linearizing it
			if matches {
				return true, state{true, i.Value}
			}
			return true, st
		}
		if o.Swapped {
			return matches, state{true, i.Value}
		}
		return !matches, st
	}
	return false, st
}

func describeState(s interface{}) string {
	st := s.(state)
	if !st.Set {
		return "absent"
	}
	return fmt.Sprint(st.V)
}

func describeOp(in, out interface{}) string {
	i := in.(opInput)
	o := out.(opOutput)
	switch i.Kind {
	case "read":
		return "read() -> " + describeState(o.Read)
	case "write":
		if !o.Known {
			return fmt.Sprintf("write(%d) -> ?", i.Value)
		}
		return fmt.Sprintf("write(%d)", i.Value)
	default:
		res := "?"
		if o.Known {
			res = fmt.Sprint(o.Swapped)
		}
		return fmt.Sprintf("cas(%d, %d) -> %s", i.Expect, i.Value, res)
	}
}

var model = porcupine.Model{
	Init:              func() interface{} { return state{} },
	Step:              step,
	DescribeOperation: describeOp,
	DescribeState:     describeState,
	DescribeOperationMetadata: func(m interface{}) string {
		if m == nil {
			return ""
		}
		return m.(string)
	},
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "linearize: "+format+"\n", args...)
	os.Exit(2)
}

// convert validates one input operation; keep=false drops it (failed, or an unknown read).
func convert(n int, o inOp) (op porcupine.Operation, key string, keep bool, pending bool) {
	where := fmt.Sprintf("ops[%d]", n)
	if o.Key == nil {
		fail("%s: key is missing", where)
	}
	if o.Client == nil || *o.Client < 0 {
		fail("%s: client must be a non-negative integer", where)
	}
	if o.Call == nil {
		fail("%s: call is missing", where)
	}
	switch o.Outcome {
	case "ok", "fail", "unknown":
	default:
		fail("%s: outcome %q is not one of ok, fail, unknown", where, o.Outcome)
	}
	in := opInput{Kind: o.Op}
	out := opOutput{Known: o.Outcome == "ok"}
	switch o.Op {
	case "read":
		if o.Value != nil {
			out.Read = state{true, *o.Value}
		}
	case "write":
		if o.Value == nil {
			fail("%s: a write needs its value", where)
		}
		in.Value = *o.Value
	case "cas":
		if o.Value == nil || o.Expect == nil {
			fail("%s: a cas needs value and expect", where)
		}
		in.Value, in.Expect = *o.Value, *o.Expect
		if o.Outcome == "ok" {
			if o.Swapped == nil {
				fail("%s: an acknowledged cas needs swapped", where)
			}
			out.Swapped = *o.Swapped
		}
	default:
		fail("%s: op %q is not one of read, write, cas", where, o.Op)
	}
	if o.Outcome == "fail" || (o.Outcome == "unknown" && o.Op == "read") {
		return op, *o.Key, false, false
	}
	ret := int64(math.MaxInt64)
	if o.Outcome == "ok" {
		if o.Return == nil {
			fail("%s: an acknowledged operation needs its return time", where)
		}
		if *o.Return < *o.Call {
			fail("%s: return %d precedes call %d", where, *o.Return, *o.Call)
		}
		ret = *o.Return
	}
	var meta interface{}
	if o.Label != "" {
		meta = o.Label
	}
	op = porcupine.Operation{ClientId: *o.Client, Input: in, Call: *o.Call, Output: out, Return: ret, Metadata: meta}
	return op, *o.Key, true, o.Outcome == "unknown"
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

func htmlPath(base, key string, many bool) string {
	if !many {
		return base
	}
	ext := filepath.Ext(base)
	return strings.TrimSuffix(base, ext) + "." + unsafeChars.ReplaceAllString(key, "_") + ext
}

func main() {
	timeout := flag.Duration("timeout", 60*time.Second, "per-key check timeout (then the result is unknown)")
	html := flag.String("html", "", "write porcupine's visualization of an illegal key here (KEY inserted before the extension when several are illegal)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: linearize [-timeout 60s] [-html out.html] [history.json|-]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	var r io.Reader = os.Stdin
	if flag.NArg() == 1 && flag.Arg(0) != "-" {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fail("%v", err)
		}
		defer f.Close()
		r = f
	}
	var in input
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		fail("cannot read the history: %v", err)
	}

	byKey := map[string][]porcupine.Operation{}
	pending := map[string]int{}
	res := output{Keys: map[string]keyResult{}, Visualizations: []string{}}
	for n, o := range in.Ops {
		op, key, keep, unknown := convert(n, o)
		if !keep {
			res.OpsDropped++
			continue
		}
		byKey[key] = append(byKey[key], op)
		if unknown {
			pending[key]++
		}
		res.OpsChecked++
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	type illegal struct {
		key  string
		info porcupine.LinearizationInfo
	}
	var bad []illegal
	unknown := false
	for _, k := range keys {
		t0 := time.Now()
		result, info := porcupine.CheckOperationsVerbose(model, byKey[k], *timeout)
		kr := keyResult{Ops: len(byKey[k]), Pending: pending[k], Seconds: time.Since(t0).Seconds()}
		switch result {
		case porcupine.Ok:
			kr.Result = "ok"
		case porcupine.Illegal:
			kr.Result = "illegal"
			bad = append(bad, illegal{k, info})
		default:
			kr.Result = "unknown"
			unknown = true
		}
		res.Keys[k] = kr
	}
	switch {
	case len(bad) > 0:
		res.Result = "illegal"
	case unknown:
		res.Result = "unknown"
	default:
		res.Result = "ok"
		res.OK = true
	}
	if *html != "" {
		for _, b := range bad {
			p := htmlPath(*html, b.key, len(bad) > 1)
			if err := porcupine.VisualizePath(model, b.info, p); err != nil {
				fmt.Fprintf(os.Stderr, "linearize: visualization of key %s: %v\n", b.key, err)
				continue
			}
			res.Visualizations = append(res.Visualizations, p)
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(res); err != nil {
		fail("%v", err)
	}
	if !res.OK {
		os.Exit(1)
	}
}
