package codec

import "fmt"

// Config is one way a Planner can code a tensor (for tenpak_x_v2 a grid,
// a number of bits and a group length). Rate control treats it as opaque:
// it only passes it back to the Planner that offered it. String is what a
// record's params say for a tensor coded with it.
type Config interface {
	String() string
}

// Planner is implemented by codecs whose coding of each tensor is one of
// several configurations, chosen per tensor by rate control (package rate)
// so that a whole file fits a size. A codec that implements it is
// selectable by --bpw and --target-size.
//
// Rate control sees a tensor as a rows×cols matrix (rows along the first
// dimension, after the transposition the pipeline applies), codes a sample
// of its rows with every candidate to estimate each one's error, takes each
// candidate's exact payload size, allocates a budget over the model, and
// asks for the codec that codes every tensor with its chosen Config.
//
// A Planner keeps the Options it was created with (seed, workers): the
// estimates use them, and so does the codec Planned returns.
type Planner interface {
	Codec
	// Candidates returns the configurations considered for a rows×cols
	// matrix, at least one.
	Candidates(rows, cols int) []Config
	// Distortions codes the sample x (n×cols, row-major: whole rows of a
	// tensor) with each of cfgs and returns, per Config, the squared
	// error Σ imp[c]·(x − x̂)² over the sample (imp nil: all weights 1).
	// It returns an error wrapping ErrUnsupported when x holds values the
	// codec cannot represent; the tensor is then left out of the plan.
	Distortions(x []float32, cols int, imp []float32, cfgs []Config) ([]float64, error)
	// ConfigSize returns the exact payload size of a rows×cols matrix
	// coded with cfg.
	ConfigSize(cfg Config, rows, cols int) (int64, error)
	// Planned returns the codec, configured like this one, that codes
	// each tensor named in p.Configs with its Config.
	Planned(p Plan) (Codec, error)
}

// Plan is the outcome of rate control that a Planner builds a codec for.
type Plan struct {
	// Configs is the Config of each planned tensor, by name. A tensor
	// without an entry is coded with the codec's default.
	Configs map[string]Config
	// Importance, when it has an entry of cols values for a tensor,
	// weights the squared error of each of its columns (the same weights
	// Distortions was given).
	Importance map[string][]float32
	// Summary is recorded as the codec's Params ("bpw=4 target=…").
	Summary string
	// Bytes, for a Planner that is a SizeEstimator, is the payload size
	// allotted to each planned tensor, by name: the planned codec writes
	// no more than that for the tensor (coarsening its coding if the
	// estimate was short). Planners with exact ConfigSize ignore it.
	Bytes map[string]int64
}

// SizeEstimator is implemented by Planners whose payload size depends on
// the values, not only on the shape (entropy-coded payloads), so that
// ConfigSize can give only an upper bound. Rate control then takes each
// candidate's size from EstimateSizes on the sampled rows, allocates with
// those estimates, and passes each tensor's allotted size to Planned in
// Plan.Bytes, which the planned codec must not exceed.
type SizeEstimator interface {
	// EstimateSizes returns, per Config, an estimate of the payload size
	// of the whole rows×cols matrix coded with it, from the sample x
	// (n×cols, row-major: whole rows of the tensor, as for Distortions;
	// imp as there). The estimate should err high rather than low.
	EstimateSizes(x []float32, rows, cols int, imp []float32, cfgs []Config) ([]int64, error)
}

// JointEstimator is a SizeEstimator that rounds the sample once per Config
// for both the size and the distortion: rate control calls Estimate
// instead of Distortions and EstimateSizes.
type JointEstimator interface {
	SizeEstimator
	// Estimate returns EstimateSizes's sizes and, per Config, the
	// distortion as Distortions defines it, of the sample rows coded as
	// part of the whole rows×cols matrix.
	Estimate(x []float32, rows, cols int, imp []float32, cfgs []Config) ([]int64, []float64, error)
}

// Plans reports whether the codec registered under name chooses a
// configuration per tensor (implements Planner): the params of its records
// then name each tensor's Config.
func Plans(name string) bool {
	mu.RLock()
	e, ok := byName[name]
	mu.RUnlock()
	if !ok {
		return false
	}
	c, err := e.factory(Options{})
	if err != nil {
		return false
	}
	_, ok = c.(Planner)
	return ok
}

// AsConfigs returns a Planner's own configurations as Configs (for
// Candidates).
func AsConfigs[T Config](cs []T) []Config {
	out := make([]Config, len(cs))
	for i, c := range cs {
		out[i] = c
	}
	return out
}

// ConfigsOf converts the Configs that rate control hands back to a
// Planner's own type T, or returns an error naming the codec and the
// first Config of another type.
func ConfigsOf[T Config](codecName string, cfgs []Config) ([]T, error) {
	out := make([]T, len(cfgs))
	for i, c := range cfgs {
		v, ok := c.(T)
		if !ok {
			return nil, fmt.Errorf("%s: configuration %v (%T) is not a %s Config", codecName, c, c, codecName)
		}
		out[i] = v
	}
	return out, nil
}

// PlanConfigs converts each tensor's Config in p to a Planner's own type
// T (ConfigsOf) and, when T has a Valid method, checks it, naming the
// tensor in the error.
func PlanConfigs[T Config](codecName string, p Plan) (map[string]T, error) {
	plan := make(map[string]T, len(p.Configs))
	for name, cfg := range p.Configs {
		cs, err := ConfigsOf[T](codecName, []Config{cfg})
		if err == nil {
			if v, ok := any(cs[0]).(interface{ Valid() error }); ok {
				err = v.Valid()
			}
		}
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		plan[name] = cs[0]
	}
	return plan, nil
}
