// Command allocmono compares rate control's two allocations on a codec's
// plan of a checkpoint: the allocation of exact sizes (Lagrangian search,
// greedy fill, pair moves: what tenpak_x_v2 uses) and the monotone one
// (the longest prefix of all hull steps ranked by error removed per byte:
// what codecs of estimated sizes use). For each --bpw it prints, per
// allocation, the payload bytes left unspent and the estimated mean
// weighted SQNR (as the conversion summary computes it); then, over every
// pair of the budgets, how many pairs give some tensor fewer bytes or more
// estimated error under the larger budget. With -tied NAME it also counts,
// per allocation and budget, the tensors whose last step up their hull is
// worth less per byte than tensor NAME's next one (NAME starved while
// bytes buy less elsewhere).
//
//	go run ./tools/allocmono -codec tenpak_x_v2 fixtures/tiny-llama.safetensors
//
// The payload budget is bpw × the planned tensors' weights / 8: the same
// for both allocations (a conversion subtracts the file's overhead from
// its whole-file budget first).
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/internal/toyentropy"
	"github.com/tpconvert/tpconvert/rate"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

func main() {
	toyentropy.Register() // a codec of estimated sizes, for comparison
	name := flag.String("codec", "tenpak_x_v2", "codec that plans (also toy_entropy, the test codec of estimated sizes)")
	bpws := flag.String("bpw", "2,2.5,3,3.5,4,4.5,5,5.5,6", "payload bits per weight, comma-separated")
	flag.StringVar(&tied, "tied", "", "tensor whose next step is compared with every other tensor's last")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: allocmono [flags] MODEL")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *name, *bpws); err != nil {
		fmt.Fprintln(os.Stderr, "allocmono:", err)
		os.Exit(1)
	}
}

var tied string

// hullGain returns the error removed per byte by t's last step up its
// hull (next: by its next step), and whether there is one.
func hullGain(t *rate.Tensor, next bool) (float64, bool) {
	h := rate.Hull(t.Options)
	for i, j := range h {
		if j != t.Choice {
			continue
		}
		lo, hi := i-1, i
		if next {
			lo, hi = i, i+1
		}
		if lo < 0 || hi >= len(h) {
			return 0, false
		}
		a, b := t.Options[h[lo]], t.Options[h[hi]]
		return (a.Dist - b.Dist) / float64(b.Bytes-a.Bytes), true
	}
	return 0, false
}

// starved counts the tensors whose last step is worth less per byte than
// the next step of the tensor named tied.
func starved(p *rate.Plan) int {
	var ge float64
	found := false
	for _, t := range p.Tensors {
		if t.Info.Name == tied {
			ge, found = hullGain(t, true)
		}
	}
	n := 0
	for _, t := range p.Tensors {
		if g, ok := hullGain(t, false); found && ok && t.Info.Name != tied && g < ge {
			n++
		}
	}
	return n
}

func run(path, name, bpws string) error {
	c, err := codec.New(name, codec.Options{})
	if err != nil {
		return err
	}
	p, ok := c.(codec.Planner)
	if !ok {
		return fmt.Errorf("%s does not plan", name)
	}
	src, err := convert.OpenSource(path)
	if err != nil {
		return err
	}
	defer src.Close()
	sel := stream.Selector{Layers: stream.LayersWeights}
	plan, err := rate.Build(context.Background(), src, p, sel.Select, rate.Options{Workers: 2, Transpose: func(t tensor.Info) bool { return arch.IsConv1D(t.Name) }})
	if err != nil {
		return err
	}
	var weights int64
	for _, t := range plan.Tensors {
		weights += t.Info.Elems()
	}
	var budgets []int64
	for _, f := range strings.Split(bpws, ",") {
		b, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return err
		}
		budgets = append(budgets, int64(b*float64(weights)/8))
	}
	fmt.Printf("%s, %s, %d tensors, %d weights\n", path, name, len(plan.Tensors), weights)
	fmt.Println("| bpw | exact-size allocation: unspent | est. SQNR dB | monotone: unspent | est. SQNR dB |")
	fmt.Println("|---|---|---|---|---|")
	choices := map[bool][][]rate.Option{}
	for _, b := range budgets {
		row := fmt.Sprintf("| %.2f |", float64(b)*8/float64(weights))
		for _, mono := range []bool{false, true} {
			plan.Estimated = mono
			if err := plan.Allocate(b); err != nil {
				return err
			}
			var rel float64
			var ch []rate.Option
			for _, t := range plan.Tensors {
				rel += t.Chosen().Dist / t.Weight
				ch = append(ch, t.Chosen())
			}
			choices[mono] = append(choices[mono], ch)
			rel /= float64(len(plan.Tensors))
			row += fmt.Sprintf(" %d B (%.3f %%) | %.3f |", b-plan.Bytes(), 100*float64(b-plan.Bytes())/float64(b), -10*math.Log10(rel))
			if tied != "" {
				row += fmt.Sprintf(" %d below %s |", starved(plan), tied)
			}
		}
		fmt.Println(row)
	}
	for _, mono := range []bool{false, true} {
		bad, pairs := 0, 0
		ch := choices[mono]
		for i := range ch {
			for j := i + 1; j < len(ch); j++ {
				pairs++
				for k := range ch[i] {
					if ch[j][k].Bytes < ch[i][k].Bytes || ch[j][k].Dist > ch[i][k].Dist {
						bad++
						break
					}
				}
			}
		}
		fmt.Printf("monotone=%v: %d of %d budget pairs give some tensor fewer bytes or more error at the larger budget\n", mono, bad, pairs)
	}
	return nil
}
