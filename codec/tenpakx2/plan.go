package tenpakx2

import "github.com/tpconvert/tpconvert/codec"

// Codec implements codec.Planner: rate control chooses one Config per
// tensor among Candidates.
var _ codec.Planner = (*Codec)(nil)

// Candidates returns the Configs considered for a matrix with cols
// columns: 8-bit group parameters (s8) for every grid, and FP16 group
// parameters for the uniform grid with groups of 32 and symmetric 8/32,
// which reproduce checkpoints dequantized from Q4_1/Q5_1/Q8_0-style
// formats exactly.
func Candidates(cols int) []Config {
	var out []Config
	for _, b := range []int{3, 4, 5, 6, 8} {
		out = append(out, Config{Grid: GridUniform, Bits: b, Group: 32})
	}
	out = append(out, Config{Grid: GridSymmetric, Bits: 8, Group: 32})
	for _, g := range []int{16, 32, 64} {
		for _, b := range []int{2, 3, 4, 5, 6, 8} {
			out = append(out, Config{Grid: GridUniform, Bits: b, Group: g, S8: true})
		}
	}
	for _, g := range []int{16, 32} {
		for _, b := range []int{4, 5, 6, 8} {
			out = append(out, Config{Grid: GridSymmetric, Bits: b, Group: g, S8: true})
		}
	}
	for _, g := range []int{32, 64, 128} {
		for b := 1; b <= MaxNormalBits; b++ {
			out = append(out, Config{Grid: GridNormal, Bits: b, Group: g, S8: true})
		}
	}
	return append(out, Config{Grid: GridHalf, Bits: 16})
}

// Candidates implements codec.Planner (see the function Candidates).
func (c *Codec) Candidates(rows, cols int) []codec.Config {
	return codec.AsConfigs(Candidates(cols))
}

// configs converts the Configs rate control hands back.
func configs(cfgs []codec.Config) ([]Config, error) {
	return codec.ConfigsOf[Config]("tenpak_x_v2", cfgs)
}

// Distortions implements codec.Planner: the squared error of each Config
// on the sample rows x, with the codec's seed (see the function
// Distortions). Values CheckRange refuses make the tensor unsupported.
func (c *Codec) Distortions(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]float64, error) {
	cs, err := configs(cfgs)
	if err != nil {
		return nil, err
	}
	if err := CheckRange(x); err != nil {
		return nil, err
	}
	return Distortions(x, cols, imp, cs, c.seed^DefaultSeed), nil
}

// ConfigSize implements codec.Planner: cfg's exact payload size.
func (c *Codec) ConfigSize(cfg codec.Config, rows, cols int) (int64, error) {
	cs, err := configs([]codec.Config{cfg})
	if err != nil {
		return 0, err
	}
	return cs[0].PayloadSize(rows, cols)
}

// Planned implements codec.Planner: a copy of c (seed, workers) that codes
// each tensor named in p.Configs with its Config, weighting column errors
// by p.Importance, with p.Summary as its Params.
func (c *Codec) Planned(p codec.Plan) (codec.Codec, error) {
	plan, err := codec.PlanConfigs[Config]("tenpak_x_v2", p)
	if err != nil {
		return nil, err
	}
	cc := *c
	cc.plan, cc.imp, cc.summary = plan, p.Importance, p.Summary
	return &cc, nil
}
