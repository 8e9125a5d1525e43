import { notInitialised, type CreditModule } from "../../core/module.js";
import type { PricingService } from "../pricing/service.js";
import { sessionDeps, type SessionDeps } from "./service.js";

/** The metering module (docs/metering.md) as a `CreditModule`, with what its sessions use once initialised. */
export interface MeteringModule extends CreditModule {
  /** What metering's sessions use of the core, with the price book (a `ConfigurationError` before `init`). */
  session(): SessionDeps;
}

/** The metering module over the price book `pricing`: `init` takes the context's holds and commits. */
export function meteringModule(pricing: PricingService | undefined): MeteringModule {
  let deps: SessionDeps | undefined;
  return {
    id: "metering",
    init(ctx) {
      deps = sessionDeps(ctx, pricing);
    },
    session() {
      if (deps === undefined) throw notInitialised("metering");
      return deps;
    },
  };
}

/** The metering module of each credit service that carries one (`CreditService`), by the service. */
const modules = new WeakMap<object, MeteringModule>();

/** Records `metering` as the metering module of `credits` (its constructor does, once the module is initialised). */
export function carriesMetering(credits: object, metering: MeteringModule): void {
  modules.set(credits, metering);
}

/**
 * What the metering module of `credits` gives its sessions (the context's charges, ledger and
 * logger): the HTTP middlewares' way to the core from `manager.credits`. Undefined for a stand-in
 * (`Pick<CreditService, …>`) that carries none.
 */
export function meteringOf(credits: object): SessionDeps | undefined {
  return modules.get(credits)?.session();
}
