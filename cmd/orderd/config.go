package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/orderd/orderd/sqltimer"
)

// The configuration file (--config, ORDERD_CONFIG) holds what the flags hold,
// for a daemon whose settings live in a file next to its unit: its top-level
// keys are the flags' names with - as _ (redis_url, db, sweep_interval, …).
// A flag given on the command line wins over the environment, which wins
// over the file. "${NAME}" in a value is replaced by the environment
// variable NAME (an unset one is an error), so the file can be committed
// without its secrets. The key timers lists timers on a shop's own tables:
// orderd listen runs them (owntables.go) instead of the built-in ones.

// configFile is a configuration file as read.
type configFile struct {
	path   string
	values map[string]string // flag name → value, from the file
	timers []timerConfig
}

// timerConfig is one entry of timers.
type timerConfig struct {
	Name     string         `yaml:"name"`
	Key      string         `yaml:"key"`
	ID       string         `yaml:"id"`
	BatchMax int            `yaml:"batch_max"`
	Claim    string         `yaml:"claim"`
	Apply    []string       `yaml:"apply"`
	Sweep    string         `yaml:"sweep"`
	Deadline string         `yaml:"deadline"`
	Webhook  *webhookConfig `yaml:"webhook"`
}

// webhookConfig is a timer that posts its ids to the shop's app.
type webhookConfig struct {
	URL         string        `yaml:"url"`
	Secret      string        `yaml:"secret"`
	Timeout     time.Duration `yaml:"timeout"`
	MaxAttempts int           `yaml:"max_attempts"`
}

var (
	envRef    = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	timerName = regexp.MustCompile(`^[a-z0-9_]+$`)
)

// loadConfig reads the configuration file at path. known tells whether a
// top-level key names a flag (- as _) of some command.
func loadConfig(path string, known func(flag string) bool) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cf := &configFile{path: path, values: map[string]string{}}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("config %s: %s", path, fmt.Sprintf(format, args...))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fail("%v", err)
	}
	if len(doc.Content) == 0 { // an empty file sets nothing
		return cf, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fail("line %d: want a mapping of settings", root.Line)
	}
	if err := expandEnv(root); err != nil {
		return nil, fail("%v", err)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch {
		case k.Value == "timers":
			if cf.timers, err = decodeTimers(v); err != nil {
				return nil, fail("%v", err)
			}
		case known(strings.ReplaceAll(k.Value, "_", "-")) && !strings.Contains(k.Value, "-"):
			if v.Kind != yaml.ScalarNode {
				return nil, fail("line %d: %s: want a single value", v.Line, k.Value)
			}
			cf.values[strings.ReplaceAll(k.Value, "_", "-")] = v.Value
		default:
			return nil, fail("line %d: unknown key %q", k.Line, k.Value)
		}
	}
	return cf, nil
}

// expandEnv replaces ${NAME} in every scalar value under n.
func expandEnv(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var missing string
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			v, ok := os.LookupEnv(name)
			if !ok && missing == "" {
				missing = name
			}
			return v
		})
		if missing != "" {
			return fmt.Errorf("line %d: ${%s} is not set in the environment", n.Line, missing)
		}
		return nil
	}
	for i, c := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue // a key
		}
		if err := expandEnv(c); err != nil {
			return err
		}
	}
	return nil
}

// decodeTimers reads and checks the timers list.
func decodeTimers(n *yaml.Node) ([]timerConfig, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: timers: want a list", n.Line)
	}
	var timers []timerConfig
	names, keys := map[string]bool{}, map[string]bool{}
	for i, item := range n.Content {
		var t timerConfig
		if err := decodeStrict(item, &t); err != nil {
			return nil, fmt.Errorf("timers[%d]: %v", i, err)
		}
		label := fmt.Sprintf("timer %q (line %d)", t.Name, item.Line)
		if t.Name == "" {
			label = fmt.Sprintf("timers[%d] (line %d)", i, item.Line)
		}
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("%s: %v", label, err)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("%s: another timer has the name %q", label, t.Name)
		}
		if keys[t.Key] {
			return nil, fmt.Errorf("%s: another timer has the key %q", label, t.Key)
		}
		names[t.Name], keys[t.Key] = true, true
		timers = append(timers, t)
	}
	return timers, nil
}

// decodeStrict decodes n into v, refusing keys v does not have.
func decodeStrict(n *yaml.Node, v any) error {
	out, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// check tells what is wrong with t, if anything.
func (t *timerConfig) check() error {
	switch {
	case t.Name == "":
		return fmt.Errorf("no name")
	case !timerName.MatchString(t.Name):
		return fmt.Errorf("name %q: use a-z, 0-9 and _", t.Name)
	case t.Key == "":
		return fmt.Errorf("no key")
	case t.ID != "" && t.ID != "int" && t.ID != "string":
		return fmt.Errorf("id %q: use int or string", t.ID)
	case t.BatchMax < 0:
		return fmt.Errorf("batch_max must be positive, not %d", t.BatchMax)
	}
	sql := t.Claim != "" || len(t.Apply) > 0
	switch {
	case sql && t.Webhook != nil:
		return fmt.Errorf("both claim/apply and webhook: a timer is one or the other")
	case !sql && t.Webhook == nil:
		return fmt.Errorf("neither claim and apply nor webhook")
	case sql && (t.Claim == "" || len(t.Apply) == 0):
		return fmt.Errorf("claim and apply go together")
	}
	if w := t.Webhook; w != nil {
		switch {
		case w.URL == "" || !(strings.HasPrefix(w.URL, "http://") || strings.HasPrefix(w.URL, "https://")):
			return fmt.Errorf("webhook: url %q: want http:// or https://", w.URL)
		case w.Secret == "":
			return fmt.Errorf("webhook: no secret")
		case w.Timeout < 0:
			return fmt.Errorf("webhook: timeout must be positive, not %v", w.Timeout)
		case w.MaxAttempts < 0:
			return fmt.Errorf("webhook: max_attempts must be positive, not %d", w.MaxAttempts)
		}
	}
	stmts := map[string][]string{"claim": {t.Claim}, "apply": t.Apply, "deadline": {t.Deadline}}
	for what, list := range stmts {
		for _, s := range list {
			if err := sqltimer.CheckPlaceholders(s, "ids"); err != nil {
				return fmt.Errorf("%s: %v", what, err)
			}
		}
	}
	if err := sqltimer.CheckPlaceholders(t.Sweep, "limit"); err != nil {
		return fmt.Errorf("sweep: %v", err)
	}
	return nil
}

// apply sets, from the file, every flag of cmd not set on the command line
// or in the environment.
func (cf *configFile) apply(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		v, ok := cf.values[f.Name]
		if !ok || f.Changed || err != nil || f.Name == "config" {
			return
		}
		if e := cmd.Flags().Set(f.Name, v); e != nil {
			err = fmt.Errorf("config %s: %s: %v", cf.path, strings.ReplaceAll(f.Name, "-", "_"), e)
		}
	})
	return err
}

// configCommands are the commands that read a configuration file.
var configCommands = []string{"listen", "status"}

// configKeys tells whether a top-level key of a configuration file (- for _)
// names a flag of root's or of a command that reads the file.
func configKeys(root *cobra.Command) func(flag string) bool {
	known := map[string]bool{}
	add := func(f *pflag.Flag) { known[f.Name] = true }
	root.PersistentFlags().VisitAll(add)
	for _, c := range root.Commands() {
		for _, name := range configCommands {
			if c.Name() == name {
				c.LocalFlags().VisitAll(add)
			}
		}
	}
	delete(known, "config")
	delete(known, "help")
	return func(flag string) bool { return known[flag] }
}

// addConfigFlag adds --config to cmd.
func addConfigFlag(cmd *cobra.Command, o *globalOptions) {
	cmd.Flags().StringVar(&o.Config, "config", "", "read settings from this YAML file: the flags' names with _ for - as keys; a flag or ORDERD_ variable wins")
}
