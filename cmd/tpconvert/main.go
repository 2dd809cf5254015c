// Command tpconvert compresses LLM checkpoints (safetensors files, sharded
// Hugging Face checkouts, GGUF files) into .tpk files with the TenPak-X
// codecs (by default the codec the registry declares, sized by --bpw or
// --target-size) or a baseline codec, and restores .tpk files to the
// container they came from for runtimes that do not read .tpk.
//
// Usage:
//
//	tpconvert [compress] INPUT [-o OUT.tpk] [flags]
//	tpconvert restore IN.tpk|DIR [-o OUT] [flags]
//	tpconvert batch SRC... -o OUTDIR [flags]
//	tpconvert inspect FILE [--json]
//	tpconvert verify FILE.tpk [--json]
//
// Run "tpconvert help" or "tpconvert COMMAND --help" for the flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/stream"

	// Codecs register themselves.
	_ "github.com/tpconvert/tpconvert/codec/basic"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx3"
)

// version, if set at build time with -ldflags "-X main.version=...",
// overrides the module's build information (buildVersion).
var version = ""

// buildVersion returns the version this binary reports and batch
// manifests record: main.version if set, else the main module's version
// from its build information ("v1.2.3" for go install m@v1.2.3), else the
// VCS revision it was built from (with "+dirty" for a modified tree), else
// "(devel)".
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v != "" && v != "(devel)" {
		return v
	}
	var rev, t string
	dirty := false
	for _, st := range bi.Settings {
		switch st.Key {
		case "vcs.revision":
			rev = st.Value
		case "vcs.time":
			t = st.Value
		case "vcs.modified":
			dirty = st.Value == "true"
		}
	}
	if rev == "" {
		return "(devel)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v = "(devel) " + rev
	if dirty {
		v += "+dirty"
	}
	if t != "" {
		v += " " + t
	}
	return v
}

// usage is the text of "tpconvert help"; the default codec's name and
// parameters come from the codec registry.
func usage() string {
	c, err := codec.New(codec.Default(), codec.Options{})
	params := ""
	if err == nil {
		params = " (" + c.Params() + ")"
	}
	return fmt.Sprintf(usageText, codec.Default(), params)
}

const usageText = `tpconvert: compress LLM checkpoints without calibration data

Usage:
  tpconvert [compress] INPUT [-o OUT.tpk] [flags]   compress a checkpoint
  tpconvert restore IN.tpk|DIR [-o OUT] [flags]     rebuild safetensors/GGUF
  tpconvert batch SRC... -o OUTDIR [flags]          convert many checkouts
  tpconvert inspect FILE [--json]                   list tensors, codecs, sizes
  tpconvert verify FILE.tpk [--json]                check structure and checksums
  tpconvert codecs                                  list the codecs
  tpconvert version                                 the module version this binary was built from

INPUT is a .safetensors file, a .gguf file, or a Hugging Face checkout
directory (model.safetensors.index.json and its shards). Formats are
recognised by their content, not their names.

By default every weight matrix is coded by %[1]s%[2]s;
--codec NAME selects another ('tpconvert codecs' lists them).
No tensor is ever stored larger than its source: one a codec cannot
shrink is stored unchanged, and the summary says so.

Choose the size with --bpw (bits per parameter, whole file) or
--target-size (bytes, e.g. 1GiB): %[1]s then allocates the bits
over every weight matrix. Example: tpconvert model.safetensors --bpw 4
Keep every tensor bit-exact (and smaller) with --lossless.

Run 'tpconvert help COMMAND' or 'tpconvert COMMAND --help' for a command's flags. The user's guide is
CONVERTING.md.

Exit status: 0 success, 1 error, 2 usage error, 130 interrupted.
`

// errUsage marks errors in the command line (exit status 2).
type errUsage struct{ error }

func (e errUsage) Unwrap() error { return e.error }

// interruptGrace is how long a command may take to stop by itself after
// SIGINT or SIGTERM before main removes its temporary files and exits.
const interruptGrace = 500 * time.Millisecond

func main() {
	// Every command stops at its next cancellation point; a step that
	// has none (one long computation) is cut short here, so that the
	// process is gone within about a second of the signal, with nothing
	// left behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		time.AfterFunc(interruptGrace, func() {
			atomicfile.RemoveAll()
			fmt.Fprintln(os.Stderr, "tpconvert: interrupted; no partial output file was left")
			os.Exit(130)
		})
	}()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// runHook, if set (by tests), receives the context of each command run,
// which SIGINT and SIGTERM cancel.
var runHook func(ctx context.Context)

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if runHook != nil {
		runHook(ctx)
	}
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case ctx.Err() != nil:
		atomicfile.RemoveAll()
		defer atomicfile.Resume() // tests run further commands in this process
		fmt.Fprintln(stderr, "tpconvert: interrupted; no partial output file was left")
		return 130
	}
	fmt.Fprintf(stderr, "tpconvert: %s\n", flagWords(err))
	var ue errUsage
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'tpconvert help' for usage.")
		return 2
	}
	return 1
}

// parseOne parses args and returns the one positional argument, what
// the command's synopsis calls what.
func parseOne(fs *flag.FlagSet, args []string, what string) (string, error) {
	pos, err := parse(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", errUsage{fmt.Errorf("%s takes one %s, got %d", fs.Name(), what, len(pos))}
	}
	return pos[0], nil
}

// printJSON writes v to w as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// flagHints name, for errors the library reports in its own words, the
// flags that change the outcome.
var flagHints = []struct {
	err            error
	prefix, suffix string
}{
	{atomicfile.ErrExists, "", " (use --force to overwrite)"},
	{batch.ErrNotConverted, "", ": remove it or use --force"},
	{batch.ErrKeepsContainers, "", ": --to and --shard-size do not apply"},
	{convert.ErrQuantized, "", ": add --dequantize f16 (or f32, bf16)"},
	{stream.ErrLayers, "--layers: ", ""},
	{convert.ErrBadRate, "--bpw: ", ""},
	{convert.ErrUnrepresentable, "", "; compress them with --codec none, or --exclude them"},
	{convert.ErrNothingSelected, "", " (see --layers and --include)"},
}

// flagWords is err's message, on one line, with the hints of flagHints.
func flagWords(err error) string {
	msg := oneLine(err)
	for _, h := range flagHints {
		if errors.Is(err, h.err) {
			msg = h.prefix + msg + h.suffix
		}
	}
	return msg
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return errUsage{errors.New("no input given")}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		switch {
		case len(args) == 1:
		case args[1] == "compress" || args[1] == "restore" || args[1] == "batch" || args[1] == "inspect" || args[1] == "verify":
			return dispatch(ctx, []string{args[1], "--help"}, stdout, stderr)
		case args[1] != "codecs" && args[1] != "version":
			return errUsage{fmt.Errorf("help: unknown command %q", args[1])}
		}
		fmt.Fprint(stdout, usage())
		return nil
	case "version", "--version":
		fmt.Fprintln(stdout, "tpconvert", buildVersion())
		return nil
	case "compress":
		return cmdCompress(ctx, args[1:], stdout, stderr)
	case "restore":
		return cmdRestore(ctx, args[1:], stdout, stderr)
	case "batch":
		return cmdBatch(ctx, args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	case "verify":
		return cmdVerify(ctx, args[1:], stdout, stderr)
	case "codecs":
		return cmdCodecs(stdout)
	}
	if strings.HasPrefix(args[0], "-") || fileExists(args[0]) {
		return cmdCompress(ctx, args, stdout, stderr)
	}
	return errUsage{fmt.Errorf("unknown command or missing file %q", args[0])}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// parse parses flags that may come before or after the positional
// arguments ("tpconvert model.safetensors -o out.tpk").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	// The flag package calls Usage on every error; only -h/--help shows it.
	help := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = help }()
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				help()
				return nil, err
			}
			return nil, errUsage{flagError(err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// newFlagSet returns a flag set whose -h/--help prints the command's
// synopsis and flags on help (stdout) and whose errors are reported once,
// by run, as usage errors.
func newFlagSet(name, synopsis string, help io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(help, "Usage: %s\n\nFlags:\n", synopsis)
		fs.SetOutput(help)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

var flagValueRE = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-([^:]+): (.*)$`)

// flagName spells a flag as the help does for one letter (-o) and as the
// documentation does for words (--bpw).
func flagName(name string) string {
	name = strings.TrimLeft(name, "-")
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// flagError rewrites the flag package's messages in the words of the
// other usage errors: `--bpw "abc": not a number`.
func flagError(err error) error {
	msg := err.Error()
	if m := flagValueRE.FindStringSubmatch(msg); m != nil {
		why := m[3]
		switch {
		case strings.HasPrefix(msg, "invalid boolean"):
			why = "want true or false"
		case strings.HasSuffix(why, "parse error"):
			why = "not a number"
		case strings.HasSuffix(why, "value out of range"):
			why = "out of range"
		}
		return fmt.Errorf("%s %q: %s", flagName(m[2]), m[1], why)
	}
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag %s", flagName(name))
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("%s needs a value", flagName(name))
	}
	return err
}
