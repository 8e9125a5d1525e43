// The package ships no types; this is the part of its API the ledger uses.
declare module "on-exit-leak-free" {
  const onExit: {
    /** Calls `fn(obj, "exit")` on the process's "exit" event, holding `obj` weakly. */
    register<T extends object>(obj: T, fn: (obj: T, event: "exit") => void): void;
    unregister(obj: object): void;
  };
  export = onExit;
}
